"""Helpers for tests that talk to the running pipeline over real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis

from enricher.cache import Cache
from enricher.deadletter import DeadLetters, select
from enricher.idempotency import Idempotency
from enricher.metrics import Metrics
from enricher.pipeline import Pipeline
from enricher.pool import AnalyticsPool
from enricher.records import CHANNELS
from enricher.settings import Settings
from tests.conftest import wait_for


class Listener:
    """Collects what is published on some channels, from subscription until exit."""

    def __init__(self) -> None:
        self.messages: dict[str, list[dict[str, Any]]] = {}

    def on(self, channel: str) -> list[dict[str, Any]]:
        return self.messages.setdefault(channel, [])


@contextlib.asynccontextmanager
async def listening(redis_url: str, *channels: str) -> AsyncIterator[Listener]:
    client = Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(*channels)
    listener = Listener()
    for channel in channels:
        listener.on(channel)

    async def read() -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message and message["type"] == "message":
                listener.on(message["channel"].decode()).append(orjson.loads(message["data"]))

    reader = asyncio.create_task(read())

    async def subscribed() -> bool:
        counts = await client.pubsub_numsub(*channels)
        return all(n >= 1 for _, n in counts)

    await wait_for(subscribed, what="test listener subscription")
    try:
        yield listener
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py
        await client.aclose()


async def market_dead_letters(redis: Redis) -> int:
    """Dead letters of input messages (not of derived documents such as candles)."""
    return sum(1 for entry in await select(redis, None, None, None) if entry.channel in CHANNELS)


async def publish(redis: Redis, channel: str, *payloads: bytes) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.publish(channel, payload)
        await pipe.execute()


def with_fields(payload: bytes, **fields: Any) -> bytes:
    doc = orjson.loads(payload)
    doc.update(fields)
    return orjson.dumps(doc)


async def surface_at(redis: Redis, product: str, timestamp: str) -> dict[str, Any]:
    """`volatility_surface:{product}` once it holds the update of event time `timestamp`: the
    surface keys are written after the batches that change them, not with them."""
    found: dict[str, Any] = {}

    async def written() -> bool:
        raw = await redis.get(f"volatility_surface:{product}")
        found.update(orjson.loads(raw) if raw else {})
        return found.get("timestamp") == timestamp

    await wait_for(written, what=f"the surface of {product} at {timestamp}")
    return found


@contextlib.asynccontextmanager
async def pipeline_on(redis: Redis, settings: Settings) -> AsyncIterator[Pipeline]:
    """A pipeline with no MongoDB (persistence off) and no pool, writing to `redis`."""
    metrics = Metrics()
    yield Pipeline(
        settings,
        cache=Cache(redis),
        idempotency=Idempotency(redis, inflight_ttl=30.0, done_ttl=60),
        store=None,
        dead_letters=DeadLetters(redis, metrics, max_len=100),
        pool=AnalyticsPool(0, 0, metrics),
        metrics=metrics,
    )
