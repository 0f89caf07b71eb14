"""Which stream a message goes to: one partition per product hash, the same on every side.

The producers (the bridge, the feed with `--streams`) and every enricher instance must agree
on the partition count and the hash, so all three channels of a product land in partition
`crc32(product) % N` and one instance holds that product's state. CRC-32 is used because it
is stable across processes, machines and languages (Python's `hash()` is salted per process).
"""

from __future__ import annotations

import zlib

import orjson

from enricher.records import CHANNELS


def partition_of(product: str, partitions: int) -> int:
    return zlib.crc32(product.encode("utf-8")) % partitions


def product_of(data: bytes) -> str:
    """The top-level `product` of a payload, or "" when it has none (enricher will dead-letter it)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    product = doc.get("product") if isinstance(doc, dict) else None
    return product if isinstance(product, str) else ""


def stream_name(prefix: str, channel: str, partition: int, partitions: int) -> str:
    """`stream:market:underlying:3`; with a single partition, just `stream:market:underlying`."""
    return f"{prefix}{channel}" if partitions == 1 else f"{prefix}{channel}:{partition}"


def streams_of(prefix: str, partition: int, partitions: int) -> dict[str, str]:
    """Partition → {stream name: channel} for the three channels."""
    return {stream_name(prefix, channel, partition, partitions): channel for channel in CHANNELS}


def stream_for(prefix: str, channel: str, data: bytes, partitions: int) -> str:
    partition = 0 if partitions == 1 else partition_of(product_of(data), partitions)
    return stream_name(prefix, channel, partition, partitions)
