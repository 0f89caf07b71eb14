"""MongoStore against a real server: documents buffered as BSON, and one too large for the
server dead-lettered without holding up the others (whether the driver refuses it before
sending, DocumentTooLarge, or the server reports it as a write error, as SecantusDB does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.deadletter import DLQ_KEY, DeadLetters
from enricher.histograms import MONGO_BATCH_SIZE
from enricher.metrics import Metrics
from enricher.records import OPTION_CHAIN, UNDERLYING
from enricher.store import CHAINS, INSERT_MAX_BYTES, MAX_BSON_SIZE, TICKS, MongoStore, Pending

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


async def _nothing(marks: Sequence[str]) -> None:
    return None
