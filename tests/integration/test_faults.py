"""Fault injection on real processes: MongoDB, Redis and a pool worker are SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.bridge import writer_for
from enricher.embedded import MongoServer, RedisServer, free_port
from enricher.feed.synthetic import Message, SyntheticFeed
from enricher.records import OPTION_CHAIN, UNDERLYING
from enricher.settings import Settings
from tests.conftest import wait_for
from tests.integration.helpers import listening, publish

pytestmark = pytest.mark.slow


@pytest.fixture
def own_mongo() -> Iterator[MongoServer]:
    """A SecantusDB of this test's own, on disk, so it can be killed and restarted."""
    with MongoServer(persistent=True) as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


StartApp = Callable[..., Awaitable[Enricher]]


def unreachable_mongo(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    """Settings whose MongoDB is a port nobody listens on: nothing can be stored."""
    return make_settings(mongo_url=f"mongodb://127.0.0.1:{free_port()}/", mongo_timeout=0.5, **overrides)


def ticks(feed: SyntheticFeed, count: int) -> list[bytes]:
    return [payload for _, payload in feed.burst(count, 0, 0)]


async def count(client: AsyncMongoClient[dict[str, Any]], db: str, collection: str) -> int:
    return await client[db][collection].count_documents({})


async def test_mongo_outage_loses_and_duplicates_nothing(
    own_mongo: MongoServer, start_app: StartApp, redis: Redis, redis_base_url: str, db_name: str
) -> None:
    app = await start_app(mongo_url=own_mongo.url, mongo_timeout=1.0, mongo_op_timeout=2.0, flush_max_docs=50)
    feed = SyntheticFeed(seed=1, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=7))
    sent = ticks(feed, 1500)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(own_mongo.url, serverSelectionTimeoutMS=20000)
    try:
        async with listening(redis_base_url, "enriched:underlying") as heard:
            await publish(redis, UNDERLYING, *sent[:500])

            async def some_stored() -> bool:
                return await count(client, db_name, "underlying_ticks") > 0

            await wait_for(some_stored, timeout=30, what="first documents")
            own_mongo.kill()
            # The live path goes on while MongoDB is down: cache, publishes, candles.
            await publish(redis, UNDERLYING, *sent[500:1000])
            await wait_for(lambda: len(heard.on("enriched:underlying")) == 1000, timeout=30, what="live outputs")
            assert app.store is not None
            assert app.store.held > 0  # buffered, or in an insert attempt that has not failed yet
            newest = orjson.loads(sent[999])
            latest = orjson.loads(await redis.get(f"latest:underlying:{newest['product']}") or b"{}")
            assert latest == {"price": newest["price"], "timestamp": newest["timestamp"]}
            # Down long enough for the writer to fail and back off at least once.
            await wait_for(lambda: app.metrics.events["mongo_retries"] > 0, timeout=30, what="a failed write")
            await asyncio.to_thread(own_mongo.start)
            await publish(redis, UNDERLYING, *sent[1000:])

            async def all_stored() -> bool:
                return await count(client, db_name, "underlying_ticks") == len(sent)

            await wait_for(all_stored, timeout=90, what="every tick stored after the restart")
    finally:
        await client.close()
    assert app.metrics.events["mongo_retries"] > 0
    assert await redis.llen("dlq:enrichment") == 0


Send = Callable[[Redis, list[Message]], Awaitable[None]]


async def through_a_redis_restart(
    app: Enricher, own_redis: RedisServer, mongo: AsyncMongoClient[dict[str, Any]], db_name: str, send: Send
) -> None:
    """300 ticks, a Redis SIGKILL and restart (empty), 300 more: all 600 stored."""
    feed = SyntheticFeed(seed=2, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=7))
    sent = list(feed.burst(600, 0, 0))
    producer = Redis.from_url(own_redis.url)
    try:
        await send(producer, sent[:300])

        async def stored(n: int) -> bool:
            return await count(mongo, db_name, "underlying_ticks") == n

        await wait_for(lambda: stored(300), timeout=30, what="ticks before the outage")
        own_redis.kill()
        await wait_for(lambda: not app.source.ready.is_set(), timeout=30, what="the source noticing")
        await asyncio.to_thread(own_redis.start)
        await wait_for(app.source.ready.is_set, timeout=30, what="subscribed (or the group recreated) again")
        await producer.aclose()  # its pooled connection died with the server
        producer = Redis.from_url(own_redis.url)
        await send(producer, sent[300:])
        await wait_for(lambda: stored(600), timeout=60, what="ticks after the outage")
    finally:
        await producer.aclose()
    assert app.metrics.events["redis_reconnects"] >= 1


async def test_redis_outage_reconnects_and_resumes(
    own_redis: RedisServer,
    start_app: StartApp,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
) -> None:
    app = await start_app(redis_url=own_redis.url, retry_cap=0.5)

    async def send(producer: Redis, messages: list[Message]) -> None:
        await publish(producer, UNDERLYING, *(payload for _, payload in messages))

    await through_a_redis_restart(app, own_redis, mongo, db_name, send)


async def test_streams_source_recreates_its_group_after_redis_restarts_empty(
    own_redis: RedisServer,
    start_app: StartApp,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
) -> None:
    """A Redis restarted without its data has no streams, group or leases: all are rebuilt."""
    streams = {"source": "streams", "stream_partitions": 4, "stream_lease_ttl": 1.0, "stream_claim_idle": 1.0}
    app = await start_app(redis_url=own_redis.url, retry_cap=0.5, **streams)

    async def send(producer: Redis, messages: list[Message]) -> None:
        await writer_for(producer, app.settings).write(messages)

    await through_a_redis_restart(app, own_redis, mongo, db_name, send)


async def test_pool_worker_killed_is_rebuilt_and_nothing_lost(
    start_app: StartApp, redis: Redis, mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    app = await start_app(pool_workers=1, pool_min_strikes=0)
    executor = app.pool.executor
    assert executor is not None
    workers = list(executor._processes)  # the pool's worker pids
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    feed = SyntheticFeed(seed=3, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=7))
    chains = [payload for _, payload in feed.burst(0, 0, 40)]
    await publish(redis, OPTION_CHAIN, *chains)

    async def stored() -> bool:
        return await count(mongo, db_name, "option_chains") == len(chains)

    await wait_for(stored, timeout=60, what="every chain stored")
    assert app.metrics.events["pool_rebuilds"] >= 1
    assert app.metrics.messages[OPTION_CHAIN, "processed"] == len(chains)
    assert await redis.llen("dlq:enrichment") == 0
    assert app.pool.executor is not None
    assert set(app.pool.executor._processes).isdisjoint(workers)


async def test_overload_spills_and_loses_nothing(
    start_app: StartApp, redis: Redis, mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    app = await start_app(queue_size=64, workers=1, batch_max=32, overflow_underlying="spill")
    feed = SyntheticFeed(seed=4, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=3))
    sent = ticks(feed, 20000)
    await publish(redis, UNDERLYING, *sent)

    async def stored() -> bool:
        return await count(mongo, db_name, "underlying_ticks") == len(sent)

    await wait_for(stored, timeout=120, what="every spilled tick stored")
    assert app.metrics.messages[UNDERLYING, "overflow"] > 0
    assert app.metrics.events["spilled"] == app.metrics.messages[UNDERLYING, "overflow"]
    assert app.metrics.messages[UNDERLYING, "processed"] == len(sent)
    assert await redis.xlen("enricher:spill:market:underlying") == 0
    assert await redis.llen("dlq:enrichment") == 0


async def test_overload_conflates_chains_to_the_newest(
    start_app: StartApp, redis: Redis, mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    app: Enricher = await start_app(queue_size=2, workers=1, batch_max=1, overflow_chain="conflate", pool_workers=0)
    feed = SyntheticFeed(seed=5, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=3))
    chains = [payload for _, payload in feed.burst(0, 0, 400)]
    await publish(redis, OPTION_CHAIN, *chains)

    def superseded() -> int:
        return app.metrics.messages[OPTION_CHAIN, "superseded"]

    def processed() -> int:
        return app.metrics.messages[OPTION_CHAIN, "processed"]

    await wait_for(lambda: processed() + superseded() == len(chains), timeout=60, what="every chain accounted for")
    assert superseded() > 0
    assert app.store is not None
    await asyncio.wait_for(app.store.wait_idle(), 30)  # nothing buffered, nothing in flight
    assert await count(mongo, db_name, "option_chains") == processed()
    newest: dict[str, dict[str, Any]] = {}
    for payload in chains:
        doc = orjson.loads(payload)
        newest[f"{doc['product']}:{doc['expiry']}"] = doc
    for key, doc in newest.items():
        cached = orjson.loads(await redis.get(f"latest:chain:{key}") or b"{}")
        assert cached["timestamp"] == doc["timestamp"], key


async def test_hard_deadline_hands_everything_over(make_settings: Callable[..., Settings], redis: Redis) -> None:
    """Stop under load while MongoDB is unreachable: nothing can be stored before the deadline,
    so every message must end up in the DLQ or still in the spill stream, none dropped."""
    app = Enricher(unreachable_mongo(make_settings, grace_period=0.5, queue_size=500, workers=1, batch_max=50))
    await app.start(ready_timeout=2.0)
    feed = SyntheticFeed(seed=6, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=3))
    sent = ticks(feed, 8000)
    await publish(redis, UNDERLYING, *sent)
    await wait_for(lambda: app.metrics.messages[UNDERLYING, "received"] == len(sent), what="all received")
    await app.stop()
    letters = [orjson.loads(raw) for raw in await redis.lrange("dlq:enrichment", 0, -1)]
    assert {letter["error_type"] for letter in letters} == {"shutdown"}
    spilled = await redis.xlen("enricher:spill:market:underlying")
    payloads = {letter["payload"] for letter in letters}
    assert len(payloads) + spilled >= len(sent)  # a message in both places is fine (replay is idempotent)
    assert len(payloads) > 0


async def test_dead_letters_wait_in_memory_while_redis_is_down(own_redis: RedisServer) -> None:
    from enricher.deadletter import DeadLetters
    from enricher.metrics import Metrics

    client = Redis.from_url(own_redis.url)
    letters = DeadLetters(client, Metrics(), max_len=1000)
    writer = asyncio.create_task(letters.run(retry_delay=0.05))
    try:
        own_redis.kill()
        for index in range(5):
            letters.reject(UNDERLYING, f"bad {index}".encode(), "not_json", "while Redis was down")
        await wait_for(lambda: letters.pending == 5, what="letters buffered")
        await asyncio.to_thread(own_redis.start)

        async def all_written() -> bool:
            return letters.pending == 0 and await client.llen("dlq:enrichment") == 5

        await wait_for(all_written, timeout=30, what="the buffered letters written after the restart")
        payloads = [orjson.loads(raw)["payload"] for raw in await client.lrange("dlq:enrichment", 0, -1)]
        assert payloads == [f"bad {index}" for index in reversed(range(5))]  # newest first, none lost
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await client.aclose()


@contextlib.contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The server stopped with SIGSTOP: its connections stay open and nothing is answered."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_dead_letters_in_flight_when_the_writer_is_cancelled_are_kept(own_redis: RedisServer) -> None:
    # Shutdown cancels the writer, then writes what is pending: a hard-deadline run lost the
    # 50 letters of a batch cut off mid-write this way. A paused Redis holds the write open.
    from enricher.deadletter import DeadLetters
    from enricher.metrics import Metrics

    client = Redis.from_url(own_redis.url, socket_timeout=None)
    letters = DeadLetters(client, Metrics(), max_len=1000)
    await client.ping()
    writer = asyncio.create_task(letters.run())
    with paused(own_redis):
        for index in range(50):
            letters.reject(UNDERLYING, f"cut off {index}".encode(), "shutdown", "cancelled mid-batch")
        await wait_for(lambda: letters.pending == 0, what="the batch taken for writing")
        await cancel_and_wait(writer)
        assert letters.pending == 50
    try:
        assert await letters.write_pending()  # what shutdown does after cancelling the writer
        # The cancelled write may land too, once Redis runs again: twice is fine, never none.
        payloads = {orjson.loads(raw)["payload"] for raw in await client.lrange("dlq:enrichment", 0, -1)}
        assert payloads == {f"cut off {index}" for index in range(50)}
        assert letters.pending == 0
    finally:
        await client.aclose()


async def test_a_finished_dead_letter_writer_completes_its_write_and_nothing_is_written_twice(
    own_redis: RedisServer,
) -> None:
    # Shutdown asks the writer to finish instead of cancelling it: cancelled mid-write, its batch
    # went out again in the last write, and a replay kept those records twice (1 run in 10).
    from enricher.deadletter import DeadLetters
    from enricher.metrics import Metrics

    client = Redis.from_url(own_redis.url, socket_timeout=None)
    letters = DeadLetters(client, Metrics(), max_len=1000)
    await client.ping()
    writer = asyncio.create_task(letters.run())
    try:
        with paused(own_redis):
            for index in range(50):
                letters.reject(UNDERLYING, f"late {index}".encode(), "shutdown", "at the deadline")
            await wait_for(lambda: letters.pending == 0, what="the batch taken for writing")
            letters.finish()
            letters.reject(UNDERLYING, b"after finish", "shutdown", "at the deadline")
            assert not writer.done()  # its write is still in flight
        await asyncio.wait_for(writer, 10.0)  # returns once the write is done, without taking more
        assert letters.pending == 1
        assert await letters.write_pending()  # what shutdown does next
        payloads = [orjson.loads(raw)["payload"] for raw in await client.lrange("dlq:enrichment", 0, -1)]
        assert sorted(payloads) == sorted([f"late {index}" for index in range(50)] + ["after finish"])
    finally:
        await cancel_and_wait(writer)
        await client.aclose()


async def test_stream_acks_in_flight_when_the_flusher_is_cancelled_wait_again(own_redis: RedisServer) -> None:
    from enricher.metrics import Metrics
    from enricher.streams import StreamAcks

    client = Redis.from_url(own_redis.url, socket_timeout=None)
    acks = StreamAcks(client, "enricher", Metrics(), linger=0.0)
    await client.ping()
    flusher = asyncio.create_task(acks.run())
    try:
        with paused(own_redis):
            for index in range(20):
                acks.receipt("s", b"%d-0" % index).settle()
            await wait_for(lambda: acks.waiting == 0, what="the acks taken for sending")
            await cancel_and_wait(flusher)
            assert acks.waiting == 20  # close() sends them after cancelling the flusher
    finally:
        await client.aclose()


async def test_store_buffer_bound_dead_letters_the_oldest_while_mongo_is_down(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    app = Enricher(unreachable_mongo(make_settings, store_buffer_max=100, grace_period=0.5))
    await app.start(ready_timeout=1.0)
    feed = SyntheticFeed(seed=8, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=3))
    sent = ticks(feed, 300)
    await publish(redis, UNDERLYING, *sent)
    await wait_for(lambda: app.metrics.messages[UNDERLYING, "processed"] == len(sent), what="all processed live")
    assert app.store is not None
    assert app.store.buffered <= 100
    assert app.metrics.events["store_buffer_overflow"] == len(sent) - 100
    await app.stop()
    letters = [orjson.loads(raw) for raw in await redis.lrange("dlq:enrichment", 0, -1)]
    reasons = {
        reason: sum(1 for letter in letters if letter["error_type"] == reason)
        for reason in ("store_buffer_full", "shutdown")
    }
    assert reasons == {"store_buffer_full": 200, "shutdown": 100}  # the bound, then the deadline: none dropped
