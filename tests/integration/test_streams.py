"""The Redis Streams source in-process: acknowledgement after durability, redelivery, leases, trim, bridge."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.bridge import Bridge, writer_for
from enricher.cache import ENRICHED_UNDERLYING
from enricher.deadletter import DLQ_KEY
from enricher.feed.synthetic import Message, SyntheticFeed
from enricher.partitions import streams_of
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from enricher.settings import Settings
from enricher.store import CHAINS, QUOTES, TICKS
from enricher.streams import StreamSource
from tests.conftest import wait_for
from tests.integration.helpers import market_dead_letters

# Several apps start and stop here; PyMongo's socket leak at close (conftest) shows up.
pytestmark = pytest.mark.usefixtures("mongo_connect_leak")

PARTITIONS = 4
STREAMS: dict[str, Any] = {
    "source": "streams",
    "stream_partitions": PARTITIONS,
    "stream_lease_ttl": 1.0,
    "stream_claim_idle": 1.0,
}
COLLECTION = {UNDERLYING: TICKS, OPTION_QUOTE: QUOTES, OPTION_CHAIN: CHAINS}


def burst(ticks: int, quotes: int, chains: int, seed: int = 7) -> list[Message]:
    return list(SyntheticFeed(seed=seed).burst(ticks, quotes, chains))


def all_streams(settings: Settings) -> list[str]:
    count = settings.stream_partitions
    return [name for k in range(count) for name in streams_of(settings.stream_prefix, k, count)]


async def pending(redis: Redis, settings: Settings) -> int:
    total = 0
    for stream in all_streams(settings):
        if await redis.exists(stream):
            summary = await redis.xpending(stream, settings.stream_group)
            total += int(summary["pending"])
    return total


async def stored(mongo: AsyncMongoClient[dict[str, Any]], db: str, collection: str) -> int:
    return await mongo[db][collection].count_documents({})


def expected(messages: list[Message]) -> dict[str, int]:
    counts = dict.fromkeys(COLLECTION.values(), 0)
    for channel, _ in messages:
        counts[COLLECTION[channel]] += 1
    return counts


async def all_stored(mongo: AsyncMongoClient[dict[str, Any]], db: str, messages: list[Message]) -> bool:
    for collection, count in expected(messages).items():
        if await stored(mongo, db, collection) != count:
            return False
    return True


async def test_every_message_stored_once_and_acknowledged_only_then(
    start_app: Callable[..., Awaitable[Enricher]],
    redis: Redis,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
) -> None:
    app = await start_app(**STREAMS, consumer="solo")
    messages = burst(300, 600, 12)
    listener = redis.pubsub()
    await listener.subscribe(ENRICHED_UNDERLYING)
    assert (await listener.get_message(timeout=5))["type"] == "subscribe"
    writer = writer_for(redis, app.settings)
    await writer.write(messages)
    await writer.write(messages[:100])  # the producer sends the first 100 twice: new entries, same content
    await wait_for(lambda: all_stored(mongo, db_name, messages), 30, "every message in MongoDB")
    await wait_for(lambda: _zero(redis, app.settings), 10, "all acked")
    published = 0
    while (event := await listener.get_message(timeout=0.2)) is not None:
        published += event["channel"] == ENRICHED_UNDERLYING.encode()
    await listener.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py
    assert published == 300  # the duplicates went nowhere
    assert await stored(mongo, db_name, TICKS) == 300
    assert app.metrics.events["stream_acked"] == len(messages) + 100
    assert app.metrics.events["feed_gaps"] == 0  # partitions split the shared tick counter: not a gap
    assert await redis.llen(DLQ_KEY) == 0


async def _zero(redis: Redis, settings: Settings) -> bool:
    return await pending(redis, settings) == 0


async def test_unstored_entries_stay_pending_and_a_restart_processes_them(
    make_settings: Callable[..., Settings],
    redis: Redis,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
) -> None:
    """MongoDB unreachable: nothing is acknowledged or dead-lettered; the next run stores it all."""
    down = make_settings(
        **STREAMS,
        consumer="same",
        mongo_url="mongodb://127.0.0.1:9/?directConnection=true",
        mongo_timeout=0.2,
        mongo_op_timeout=0.5,
        grace_period=0.5,
    )
    messages = burst(200, 300, 6)
    app = Enricher(down)
    await app.start(ready_timeout=1.0)
    await writer_for(redis, down).write(messages)
    await wait_for(lambda: app.store is not None and app.store.held >= len(messages), 15, "all held for MongoDB")
    await app.stop()
    assert await market_dead_letters(redis) == 0  # derived documents (candles, surfaces) may be there
    assert await pending(redis, down) == len(messages)
    up = Enricher(make_settings(**STREAMS, consumer="same"))
    await up.start()
    try:
        await wait_for(lambda: all_stored(mongo, db_name, messages), 30, "the pending entries stored")
        await wait_for(lambda: _zero(redis, down), 10, "all acked")
    finally:
        await up.stop()
    assert await market_dead_letters(redis) == 0


async def test_bad_input_is_dead_lettered_then_acknowledged(
    start_app: Callable[..., Awaitable[Enricher]], redis: Redis
) -> None:
    app = await start_app(**STREAMS)
    await writer_for(redis, app.settings).write([(UNDERLYING, b"{not json"), (OPTION_QUOTE, b'{"product": "NIFTY"}')])
    await wait_for(lambda: _dlq_length(redis, 2), 10, "two dead letters")
    await wait_for(lambda: _zero(redis, app.settings), 10, "both acknowledged")
    await app.stop()
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name() in ("leases", "stream_acks", "stream_trim")]
    assert left == []  # a stopped instance must not stay a member (and trim others' streams)


async def _dlq_length(redis: Redis, length: int) -> bool:
    return int(await redis.llen(DLQ_KEY)) == length


async def test_two_instances_split_the_partitions_and_one_takes_over_from_the_other(
    make_settings: Callable[..., Settings],
    redis: Redis,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(StreamSource, "trim_every", 0.05)
    a = Enricher(make_settings(**STREAMS, consumer="a"))
    b = Enricher(make_settings(**STREAMS, consumer="b"))
    try:
        await a.start()
        await b.start()
        await _split_then_take_over(a, b, redis, mongo, db_name)
    finally:
        await b.stop()
        await a.stop()


async def _split_then_take_over(
    a: Enricher, b: Enricher, redis: Redis, mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    sources = [app.source for app in (a, b)]
    assert all(isinstance(source, StreamSource) for source in sources)

    def split() -> bool:
        held = [source.reading for source in sources if isinstance(source, StreamSource)]
        return len(held[0]) == len(held[1]) == PARTITIONS // 2 and not held[0] & held[1]

    await wait_for(split, 15, "two partitions each")
    first = burst(200, 200, 8)
    await writer_for(redis, a.settings).write(first)
    await wait_for(lambda: all_stored(mongo, db_name, first), 30, "the first half stored")
    await b.stop()  # a clean stop hands its leases back at once
    source_a = a.source
    assert isinstance(source_a, StreamSource)
    await wait_for(lambda: len(source_a.reading) == PARTITIONS, 15, "a holds every partition")
    second = first + burst(200, 200, 8, seed=8)
    await writer_for(redis, a.settings).write(second[len(first) :])
    await wait_for(lambda: all_stored(mongo, db_name, second), 30, "the second half stored")
    await wait_for(lambda: _zero(redis, a.settings), 10, "all acked")

    async def b_forgotten() -> bool:
        for stream in all_streams(a.settings):
            consumers = await redis.xinfo_consumers(stream, a.settings.stream_group)
            if any(c["name"] in (b"b", "b") for c in consumers):
                return False
        return True

    await wait_for(b_forgotten, 15, "the stopped consumer removed from the group")


async def test_acknowledged_entries_are_trimmed(
    start_app: Callable[..., Awaitable[Enricher]], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StreamSource, "trim_every", 0.05)
    app = await start_app(**STREAMS, consumer="trimmer")
    messages = burst(100, 100, 4)
    await writer_for(redis, app.settings).write(messages)

    async def trimmed() -> bool:
        lengths = [await redis.xlen(stream) for stream in all_streams(app.settings)]
        return sum(lengths) == 0

    await wait_for(trimmed, 15, "every stream trimmed to nothing")
    assert app.metrics.events["stream_trimmed"] == len(messages)


async def test_the_bridge_loses_what_pubsub_drops_the_streams_keep_the_rest(
    make_settings: Callable[..., Settings],
    redis: Redis,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
) -> None:
    """Bridge down: published messages are gone. Enricher down: the streams hold them."""
    settings = make_settings(**STREAMS, consumer="behind-bridge")
    publisher = SyntheticFeed(seed=3)
    before, during_bridge_down, while_enricher_down = (list(publisher.burst(50, 50, 2)) for _ in range(3))

    async def publish(messages: list[Message]) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            await pipe.execute()

    async def bridged(expect: int) -> bool:
        return sum([await redis.xlen(stream) for stream in all_streams(settings)]) == expect

    stop = asyncio.Event()
    bridge = Bridge(settings)
    running = asyncio.create_task(bridge.run(stop))
    await asyncio.wait_for(bridge.source.ready.wait(), 10)
    await publish(before)
    await wait_for(lambda: bridged(len(before)), 10, "the first batch in the streams")
    stop.set()
    await running
    await publish(during_bridge_down)  # nobody subscribed: pub/sub drops these

    stop = asyncio.Event()
    bridge = Bridge(settings)
    running = asyncio.create_task(bridge.run(stop))
    await asyncio.wait_for(bridge.source.ready.wait(), 10)
    await publish(while_enricher_down)  # no enricher runs, but the bridge keeps them
    await wait_for(lambda: bridged(len(before) + len(while_enricher_down)), 10, "the third batch in the streams")
    stop.set()
    await running

    app = Enricher(settings)
    await app.start()
    try:
        kept = before + while_enricher_down
        await wait_for(lambda: all_stored(mongo, db_name, kept), 30, "everything the streams kept")
    finally:
        await app.stop()
    assert await stored(mongo, db_name, TICKS) == 100  # the 50 published while the bridge was down are lost


@pytest.mark.parametrize("partitions", [1, 16])
def test_stream_names(partitions: int) -> None:
    names = streams_of("stream:", 3 % partitions, partitions)
    suffix = "" if partitions == 1 else ":3"
    assert set(names) == {f"stream:market:{kind}{suffix}" for kind in ("underlying", "option_quote", "option_chain")}
