"""MongoStore against a real server: documents buffered as BSON, and one too large for the
server dead-lettered without holding up the others (whether the driver refuses it before
sending, DocumentTooLarge, or the server reports it as a write error, as SecantusDB does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.deadletter import DLQ_KEY, DeadLetters
from enricher.embedded import free_port
from enricher.feed.synthetic import SyntheticFeed
from enricher.histograms import MONGO_BATCH_SIZE
from enricher.metrics import PROCESSED, Metrics
from enricher.records import CHANNELS, OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from enricher.settings import Settings
from enricher.store import (
    BACKPRESSURE_MAX_WAIT,
    CHAINS,
    INSERT_MAX_BYTES,
    MAX_BSON_SIZE,
    QUOTES,
    TICKS,
    MongoStore,
    Pending,
)
from tests.conftest import wait_for
from tests.integration.helpers import publish

Mongo = AsyncMongoClient[dict[str, Any]]


async def test_a_document_over_the_size_limit_is_dead_lettered_and_the_rest_stored(
    redis: Redis, mongo: Mongo, db_name: str
) -> None:
    metrics = Metrics()
    dead = DeadLetters(redis, metrics, max_len=100)
    durable: list[str] = []

    async def on_durable(marks: Sequence[str]) -> None:
        durable.extend(marks)

    store = MongoStore(
        mongo[db_name], metrics=metrics, dead_letters=dead, on_durable=on_durable,
        flush_interval=0.05, max_docs=1000, buffer_max=1000,
    )  # fmt: skip
    huge = {"_id": "huge", "blob": "x" * (MAX_BSON_SIZE + (1 << 20))}  # over the server's 16 MiB
    store.add(TICKS, [Pending({"_id": f"t{i}", "n": i}, f"m{i}", UNDERLYING, b"{}") for i in (1, 2)])
    store.add(TICKS, [Pending(huge, "m-huge", UNDERLYING, b'{"huge": true}')])
    assert store.buffered == 3

    assert await store.flush(deadline=float("inf")) == 0
    assert await dead.write_pending()

    assert sorted(await mongo[db_name][TICKS].distinct("_id")) == ["t1", "t2"]
    assert sorted(durable) == ["m1", "m2"]
    [letter] = [orjson.loads(item) for item in await redis.lrange(DLQ_KEY, 0, -1)]
    assert letter["error_type"] == "mongo_write_error"
    assert letter["payload"] == '{"huge": true}'


async def test_an_insert_stops_at_its_byte_bound(redis: Redis, mongo: Mongo, db_name: str) -> None:
    metrics = Metrics()
    store = MongoStore(
        mongo[db_name], metrics=metrics, dead_letters=DeadLetters(redis, metrics, max_len=100),
        on_durable=_nothing, flush_interval=0.05, max_docs=1000, buffer_max=1000,
    )  # fmt: skip
    third = INSERT_MAX_BYTES // 3 + 1  # three of these reach the bound: the third is the batch's last
    store.add(TICKS, [Pending({"_id": f"b{i}", "blob": "x" * third}, "", UNDERLYING, b"{}") for i in range(7)])

    assert await store.flush(deadline=float("inf")) == 0

    assert await mongo[db_name][TICKS].count_documents({}) == 7
    batches = metrics.histograms.series(MONGO_BATCH_SIZE, TICKS)
    assert (batches.count, batches.sum) == (3, 7)  # 3 + 3 + 1 documents


async def test_the_byte_bound_dead_letters_the_oldest_of_the_heaviest_collection(
    redis: Redis, mongo: Mongo, db_name: str
) -> None:
    metrics = Metrics()
    dead = DeadLetters(redis, metrics, max_len=100)
    store = MongoStore(
        mongo[db_name], metrics=metrics, dead_letters=dead, on_durable=_nothing,
        flush_interval=0.05, max_docs=1000, buffer_max=1000, buffer_max_bytes=10_000,
    )  # fmt: skip
    ticks = [Pending({"_id": f"t{i}", "n": i}, "", UNDERLYING, b"{}") for i in range(20)]
    store.add(TICKS, ticks)
    tick_bytes = store.buffered_bytes
    chain = "x" * 2_900  # with its BSON framing and raw payload, ~3 KB a chain
    for i in range(4):  # the fourth takes the buffer over 10,000 bytes
        store.add(CHAINS, [Pending({"_id": f"c{i}", "blob": chain}, "", OPTION_CHAIN, f'{{"c": {i}}}'.encode())])

    # The chains hold the most bytes, so the oldest chain goes, not the more numerous ticks.
    assert store.buffered == 23
    assert tick_bytes < store.buffered_bytes <= 10_000
    assert metrics.events["store_buffer_overflow"] == 1
    assert await store.flush(deadline=float("inf")) == 0
    assert store.buffered_bytes == 0
    assert await dead.write_pending()

    assert await mongo[db_name][TICKS].count_documents({}) == 20
    assert sorted(await mongo[db_name][CHAINS].distinct("_id")) == ["c1", "c2", "c3"]
    [letter] = [orjson.loads(item) for item in await redis.lrange(DLQ_KEY, 0, -1)]
    assert (letter["error_type"], letter["payload"]) == ("store_buffer_full", '{"c": 0}')


def _ticks(count: int) -> list[Pending]:
    return [Pending({"_id": f"t{i}", "blob": "x" * 100}, "", UNDERLYING, b"{}") for i in range(count)]


async def test_room_waits_for_a_writer_behind_but_not_for_one_that_is_failing(
    redis: Redis, mongo: Mongo, db_name: str
) -> None:
    metrics = Metrics()

    def store_on(client: Mongo) -> MongoStore:
        return MongoStore(
            client[db_name], metrics=metrics, dead_letters=DeadLetters(redis, metrics, max_len=100),
            on_durable=_nothing, flush_interval=0.05, max_docs=1000, buffer_max=1000, backpressure_bytes=1000,
        )  # fmt: skip

    store = store_on(mongo)
    store.add(TICKS, _ticks(20))  # ~2.5 KB: over the bound
    assert store.pressing
    room = asyncio.ensure_future(store.room())
    done, _ = await asyncio.wait({room}, timeout=0.2)
    assert not done  # held while the writer is behind and MongoDB takes writes
    assert metrics.events["store_backpressure_waits"] == 1
    assert await store.flush(deadline=float("inf")) == 0
    await asyncio.wait_for(room, 5.0)
    assert not store.pressing

    stalled = store_on(mongo)  # a writer that never gets to write: a batch waits a second, then goes
    stalled.add(TICKS, _ticks(20))
    await asyncio.wait_for(stalled.room(), BACKPRESSURE_MAX_WAIT + 5.0)
    assert stalled.pressing

    away: Mongo = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}/", serverSelectionTimeoutMS=200)
    try:
        store = store_on(away)
        store.add(TICKS, _ticks(20))
        assert store.pressing
        held = store.buffered_bytes
        assert await store.flush(deadline=time.monotonic() + 1.0) == 20  # the write failed, and is kept
        assert store.buffered_bytes == held  # requeued whole, its bytes counted again
        assert metrics.events["mongo_retries"] >= 1
        assert not store.pressing  # MongoDB away: batches must go on, the buffer's bounds apply
        await asyncio.wait_for(store.room(), 5.0)
    finally:
        await away.close()


async def test_backpressure_holds_batches_back_and_loses_none(
    start_app: Callable[..., Awaitable[Enricher]], redis: Redis, mongo: Mongo, db_name: str
) -> None:
    # Every chain and quote batch waits for the writer: small batches, and a writer that lingers.
    app = await start_app(store_backpressure_bytes=1, batch_max=10, flush_interval=0.05)
    feed = SyntheticFeed(seed=3, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=5))
    sent = list(feed.burst(50, 400, 16))
    for channel in CHANNELS:
        await publish(redis, channel, *(payload for at, payload in sent if at == channel))

    async def all_stored() -> bool:
        counts = [await mongo[db_name][name].count_documents({}) for name in (TICKS, QUOTES, CHAINS)]
        return counts == [50, 400, 16]

    await wait_for(all_stored, timeout=60, what="every document stored")
    assert app.metrics.messages[OPTION_QUOTE, PROCESSED] == 400
    assert app.metrics.messages[OPTION_CHAIN, PROCESSED] == 16
    assert app.metrics.events["store_backpressure_waits"] > 0  # it did hold batches back


async def test_backpressure_never_stalls_the_live_outputs_while_mongo_is_away(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings(
        mongo_url=f"mongodb://127.0.0.1:{free_port()}/", mongo_timeout=0.5, store_backpressure_bytes=1, grace_period=0.5
    )
    app = Enricher(settings)
    await app.start(ready_timeout=1.0)
    try:
        feed = SyntheticFeed(seed=4, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=5))
        quotes = [payload for at, payload in feed.burst(0, 300, 0) if at == OPTION_QUOTE]
        await publish(redis, OPTION_QUOTE, *quotes)
        await wait_for(
            lambda: app.metrics.messages[OPTION_QUOTE, PROCESSED] == len(quotes), timeout=30, what="all quotes live"
        )
        assert app.store is not None
        # Every document kept for MongoDB: buffered, or in an insert attempt that has not failed
        # yet (which takes them out of the buffer until it does: `buffered` alone was flaky).
        assert app.store.held == len(quotes)
    finally:
        await app.stop()


async def _nothing(marks: Sequence[str]) -> None:
    return None
