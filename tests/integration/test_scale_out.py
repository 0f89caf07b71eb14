"""Several enricher processes on one Redis and one MongoDB, through the streams source.

Each test starts real daemons (`python -m enricher run`, ENRICHER_SOURCE=streams), waits
until the partitions are split between them, and writes the feed into the streams.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.bridge import StreamWriter
from enricher.cache import ENRICHED_CHAIN, ENRICHED_UNDERLYING
from enricher.feed.synthetic import Message, SyntheticFeed
from enricher.partitions import streams_of
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from tests.conftest import wait_for
from tests.integration.helpers import listening, market_dead_letters
from tests.integration.test_lifecycle import start_daemon

pytestmark = pytest.mark.slow

PARTITIONS = 16
GROUP = "enricher"
COLLECTIONS = {UNDERLYING: "underlying_ticks", OPTION_QUOTE: "option_quotes", OPTION_CHAIN: "option_chains"}
STREAM_ENV = {
    "ENRICHER_SOURCE": "streams",
    "ENRICHER_STREAM_PARTITIONS": str(PARTITIONS),
    "ENRICHER_STREAM_LEASE_TTL": "1.5",
    "ENRICHER_STREAM_CLAIM_IDLE": "1.0",
    "ENRICHER_IDEM_INFLIGHT_TTL": "2.0",
    "ENRICHER_HTTP_PORT": "0",
    "ENRICHER_POOL_WORKERS": "0",
}
START = datetime(2025, 1, 20, 9, 15, 2)
STREAMS = [name for k in range(PARTITIONS) for name in streams_of("stream:", k, PARTITIONS)]


class Fleet:
    """Daemons by consumer name, each logging to its own file; all stopped at the end."""

    def __init__(self, redis_url: str, mongo_url: str, db_name: str, logs: Path) -> None:
        self._args = (redis_url, mongo_url, db_name)
        self._logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        log = self._logs / f"{name}.log"
        self.processes[name] = start_daemon(*self._args, log, ENRICHER_CONSUMER=name, **STREAM_ENV)

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


@pytest.fixture
def fleet(redis_base_url: str, mongo_url: str, db_name: str, tmp_path: Path) -> Iterator[Fleet]:
    group = Fleet(redis_base_url, mongo_url, db_name, tmp_path)
    yield group
    group.stop_all()


async def owners(redis: Redis) -> dict[int, str]:
    values = await redis.mget([f"enricher:lease:{GROUP}:{k}" for k in range(PARTITIONS)])
    return {k: value.decode() for k, value in enumerate(values) if isinstance(value, bytes)}


async def split_between(redis: Redis, names: set[str]) -> bool:
    held = await owners(redis)
    return len(held) == PARTITIONS and set(held.values()) == names


async def pending(redis: Redis, consumer: str | None = None) -> int:
    total = 0
    for stream in STREAMS:
        if not await redis.exists(stream):
            continue
        if consumer is None:
            total += int((await redis.xpending(stream, GROUP))["pending"])
        else:
            rows = await redis.xpending_range(stream, GROUP, "-", "+", 100000, consumername=consumer)
            total += len(rows)
    return total


def expected(messages: list[Message]) -> dict[str, int]:
    counts = dict.fromkeys(COLLECTIONS.values(), 0)
    for channel, _ in messages:
        counts[COLLECTIONS[channel]] += 1
    return counts


async def counts(mongo: AsyncMongoClient[dict[str, Any]], db: str) -> dict[str, int]:
    return {name: await mongo[db][name].count_documents({}) for name in COLLECTIONS.values()}


async def candles(mongo: AsyncMongoClient[dict[str, Any]], db: str) -> list[tuple[Any, ...]]:
    rows = mongo[db]["ohlc_candles"].find({}, {"_id": 0})
    fields = ("product", "window_minutes", "start_time", "open", "high", "low", "close", "num_ticks")
    return sorted([tuple(doc[f] for f in fields) async for doc in rows])


async def open_candles(redis: Redis) -> dict[bytes, bytes | None]:
    names = sorted([key async for key in redis.scan_iter(match="ohlc:*")])
    assert len(names) == 8 * 3
    return dict(zip(names, await redis.mget(names), strict=True))


async def write(redis: Redis, messages: list[Message]) -> None:
    writer = StreamWriter(redis, "stream:", PARTITIONS, 1_000_000)
    for start in range(0, len(messages), 1000):
        await writer.write(messages[start : start + 1000])


def the_input() -> list[Message]:
    """10,000 ticks and quotes and 200 chains over the feed's 8 products.

    Each product's ticks are 5 s apart in event time, so the 250 of each span about 21
    minutes, and 1-, 5- and 15-minute candles close along the way.
    """
    seen: dict[str, int] = {}
    messages = []
    for channel, data in SyntheticFeed(seed=11).burst(2000, 8000, 200):
        if channel == UNDERLYING:
            doc = orjson.loads(data)
            n = seen[doc["product"]] = seen.get(doc["product"], -1) + 1
            doc["timestamp"] = (START + timedelta(seconds=5 * n)).isoformat()
            messages.append((channel, orjson.dumps(doc)))
        else:
            messages.append((channel, data))
    return messages


async def test_three_instances_store_and_publish_everything_once_with_the_candles_of_one(
    fleet: Fleet,
    redis: Redis,
    redis_base_url: str,
    mongo_url: str,
    mongo: AsyncMongoClient[dict[str, Any]],
    db_name: str,
    tmp_path: Path,
) -> None:
    messages = the_input()
    want = expected(messages)
    names = {"c1", "c2", "c3"}
    for name in sorted(names):
        fleet.start(name)
    await wait_for(lambda: split_between(redis, names), 60, "16 partitions split between 3 instances")
    async with listening(redis_base_url, ENRICHED_UNDERLYING, ENRICHED_CHAIN) as listener:
        await write(redis, messages)
        await wait_for(lambda: _equal(counts(mongo, db_name), want), 120, "every message in MongoDB")
        await wait_for(lambda: _zero(pending(redis)), 30, "every entry acknowledged")
        ticks, chains = listener.on(ENRICHED_UNDERLYING), listener.on(ENRICHED_CHAIN)
        await wait_for(lambda: len(ticks) >= 2000 and len(chains) >= 200, 10, "every enriched publish")
    assert len(ticks) == 2000
    assert len(chains) == 200
    assert len({(t["product"], t["timestamp"]) for t in ticks}) == 2000  # each published once
    # Three writers, one value per product: the newest tick's, never an older one.
    newest: dict[str, tuple[str, float]] = {}
    for channel, data in messages:
        if channel == UNDERLYING:
            doc = orjson.loads(data)
            newest[doc["product"]] = max(newest.get(doc["product"], ("", 0.0)), (doc["timestamp"], doc["price"]))
    for product, (_, price) in newest.items():
        cached = orjson.loads(await redis.get(f"latest:underlying:{product}") or b"{}")
        assert cached.get("price") == price, product
    assert await market_dead_letters(redis) == 0
    assert set(fleet.stop_all().values()) == {0}
    spread = await candles(mongo, db_name)
    assert len({row[1] for row in spread}) == 3  # closed candles of every window
    still_open = await open_candles(redis)

    # The same input through one instance, on its own Redis db and MongoDB database.
    single_redis_url = redis_base_url.rsplit("/", 1)[0] + "/1"
    single = Redis.from_url(single_redis_url)
    await single.flushdb()
    single_db = db_name + "_single"
    one = start_daemon(
        single_redis_url, mongo_url, single_db, tmp_path / "single.log", ENRICHER_CONSUMER="solo", **STREAM_ENV
    )
    try:
        await wait_for(lambda: split_between(single, {"solo"}), 60, "one instance holding every partition")
        await write(single, messages)
        await wait_for(lambda: _equal(counts(mongo, single_db), want), 120, "the single run stored")
        assert await open_candles(single) == still_open
    finally:
        one.send_signal(signal.SIGTERM)
        assert one.wait(timeout=30) == 0
        await single.flushdb()
        await single.aclose()
    assert await candles(mongo, single_db) == spread


async def test_a_killed_instance_is_replaced_and_its_pending_entries_are_claimed(
    fleet: Fleet, redis: Redis, mongo: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    messages = the_input()
    half = len(messages) // 2
    for name in ("k1", "k2", "k3"):
        fleet.start(name)
    await wait_for(lambda: split_between(redis, {"k1", "k2", "k3"}), 60, "partitions split between 3 instances")
    await write(redis, messages[:half])
    await wait_for(lambda: _positive(pending(redis, "k2")), 30, "k2 holding unacknowledged entries")
    fleet.processes["k2"].send_signal(signal.SIGKILL)
    fleet.processes["k2"].wait(timeout=10)
    orphaned = await pending(redis, "k2")
    assert orphaned > 0  # what k2 had read and not finished: only a claim can save it
    fleet.start("k4")
    await wait_for(lambda: split_between(redis, {"k1", "k3", "k4"}), 60, "k2's partitions taken over")
    await write(redis, messages[half:])
    await wait_for(lambda: _equal(counts(mongo, db_name), expected(messages)), 120, "every message in MongoDB")
    await wait_for(lambda: _zero(pending(redis)), 60, "every entry acknowledged, k2's included")
    assert await pending(redis, "k2") == 0
    assert await market_dead_letters(redis) == 0
    assert await counts(mongo, db_name) == expected(messages)  # stored once: nothing twice, nothing missing


async def _equal(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def _zero(value: Any) -> bool:
    return bool(await value == 0)


async def _positive(value: Any) -> bool:
    return bool(await value > 0)
