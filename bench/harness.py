"""The benchmark's fixture: servers, clients, consumer subprocesses, and the completion check."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.asyncio import Redis

from bench.common import (
    Listener,
    TreeSampler,
    collector_paused,
    machine_header,
    stop_process,
    subscriber_counts,
    wait_subscribed,
)
from enricher.embedded import MongoServer, RedisServer, free_port
from enricher.records import CHANNELS, OPTION_CHAIN, OPTION_QUOTE, UNDERLYING, utc_iso
from enricher.store import CHAINS, QUOTES, TICKS

COLLECTION_OF = {UNDERLYING: TICKS, OPTION_QUOTE: QUOTES, OPTION_CHAIN: CHAINS}

COLLECTIONS = (TICKS, QUOTES, CHAINS)
BARE = Path(__file__).with_name("bare.py")
REFERENCES = ("bare", "floor")  # bench/bare.py, without and with --analytics


@contextlib.asynccontextmanager
async def session(
    timeout: float, env: dict[str, str], *, logs: str | None = None, prefix: str = "enricher-bench-"
) -> AsyncIterator[Context]:
    """Private Redis and SecantusDB, clients and the output listener, for one bench run; all
    stopped however it ends (SIGTERM too: it cancels the run, so every finally runs)."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        mongo_server = stack.enter_context(MongoServer())
        if logs:
            where = Path(logs)
            os.makedirs(where, exist_ok=True)
        else:
            where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        print("\n".join(machine_header(redis_server.binary)), flush=True)
        redis = Redis.from_url(redis_server.url)
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.url)
        listener = Listener(redis_server.url)
        await listener.start()
        listening = asyncio.create_task(listener.run())
        try:
            yield Context(redis_server, mongo_server, redis, mongo, listener, where, timeout, env)
        finally:
            listening.cancel()
            await listener.close()
            await redis.aclose()
            await mongo.close()


@dataclass
class Context:
    redis_server: RedisServer
    mongo_server: MongoServer
    redis: Redis
    mongo: AsyncMongoClient[dict[str, Any]]
    listener: Listener
    logs: Path
    timeout: float
    extra_env: dict[str, str] = field(default_factory=dict)
    serial: itertools.count[int] = field(default_factory=itertools.count)

    def server_samplers(self) -> tuple[TreeSampler, TreeSampler]:
        redis_pid, mongo_pid = self.redis_server.pid, self.mongo_server.pid
        assert redis_pid is not None
        assert mongo_pid is not None
        return TreeSampler(redis_pid), TreeSampler(mongo_pid)


@dataclass
class Consumer:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    db: str | None  # the MongoDB database enricher writes to; None for bare or persistence off
    metrics_port: int | None = None  # enricher's /metrics; None for bare

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").splitlines()
        return []

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_lines()[-lines:])


@contextlib.asynccontextmanager
async def consumer(ctx: Context, kind: str) -> AsyncIterator[Consumer]:
    """A fresh consumer ('bare', 'floor', 'persist' or 'nopersist') on a flushed Redis, subscribed, stopped after."""
    await ctx.redis.flushall()  # enricher's duplicate marks and latest:* stamps from earlier runs
    baseline = await subscriber_counts(ctx.redis, CHANNELS)
    number = next(ctx.serial)
    log = ctx.logs / f"{number:02d}-{kind}.log"
    db: str | None = None
    port: int | None = None
    if kind in REFERENCES:
        command, env = [sys.executable, str(BARE), ctx.redis_server.url], dict(os.environ)
        command += ["--analytics"] if kind == "floor" else []
    else:
        command = [sys.executable, "-m", "enricher", "run"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHER_")}
        db = f"bench_{number:02d}_{kind}"
        port = free_port()
        env |= {
            "ENRICHER_HTTP_PORT": str(port),
            "REDIS_URL": ctx.redis_server.url,
            "MONGO_URL": ctx.mongo_server.url,
            "ENRICHER_MONGO_DB": db,
            "ENRICHER_LOG_LEVEL": "warning",
            "ENRICHER_PERSIST": "true" if kind == "persist" else "false",
        }
        env |= ctx.extra_env
        if kind != "persist":
            db = None
    proc = _spawn(command, env, log)
    running = Consumer(kind, proc, log, db, port)
    try:
        await wait_subscribed(ctx.redis, CHANNELS, baseline, proc, within=60.0)
        with collector_paused():
            yield running
    finally:
        await asyncio.to_thread(stop_process, proc)
        if kind == "persist":
            with contextlib.suppress(PyMongoError):
                await ctx.mongo.drop_database(f"bench_{number:02d}_{kind}")


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


@dataclass
class Completion:
    outputs_at: float | None = None  # perf_counter of the last expected output
    docs_at: float | None = None  # first poll that saw every document
    cache_at: float | None = None  # first poll that saw every symbol's last quote in latest:option:*
    docs: dict[str, int] = field(default_factory=dict)
    cache_missing: int = 0
    exited: int | None = None  # the consumer's exit status if it died

    @property
    def end(self) -> float | None:
        marks = (self.outputs_at, self.docs_at, self.cache_at)
        return None if None in marks else max(m for m in marks if m is not None)


@dataclass
class Expected:
    docs: Mapping[str, int] | None = None  # per collection; None: nothing is stored
    last_ids: Mapping[str, str] = field(default_factory=dict)  # per collection: _id of the last one sent
    last_quotes: Mapping[str, str] | None = None  # symbol -> timestamp of its last quote


async def wait_done(
    ctx: Context, running: Consumer, expected: Expected, poll: float = 0.05, fine_poll: float = 0.002
) -> Completion:
    """Poll until every expected output, document and quote (in the cache) is there, or the timeout.

    Counting documents costs SecantusDB about 10 ms per 1,000 stored (it scans), so the
    poll looks up the last document of each collection by _id (~1 ms) and counts only
    when those are all there (at most every 0.5 s), or every 5 s as a fallback.

    The cache is read for the symbols still stale only, and once the quotes are all that is
    left, every `fine_poll`: at `poll` alone, a burst's completion (~0.5 s without persistence)
    was known only to the next 50 ms, against the listener's exact time for the outputs.
    Until the symbol whose last quote was sent last is current, a poll reads that one key:
    enricher takes a channel's messages in order, so the others are all but done by then.
    Reading every stale symbol (676 keys in the standard burst, parsed here) every 2 ms put
    load on Redis and on this process during the very tail being timed; how much it cost is
    within this machine's run-to-run noise.
    """
    done = Completion()
    docs = expected.docs if running.db is not None else None
    if docs is None:
        done.docs_at = 0.0
    if not expected.last_quotes:
        done.cache_at = 0.0
    last_quotes = expected.last_quotes or {}
    symbols = sorted(last_quotes, key=last_quotes.__getitem__)  # in the order their last quotes went
    done.cache_missing = len(symbols)
    deadline = time.monotonic() + ctx.timeout
    counted_at, count_at = 0.0, time.monotonic() + 5.0
    while time.monotonic() < deadline:
        now = time.perf_counter()
        if done.outputs_at is None and ctx.listener.complete.is_set():
            done.outputs_at = ctx.listener.arrivals[-1][0] if ctx.listener.arrivals else now
        if done.docs_at is None and docs is not None and running.db is not None:
            db = ctx.mongo[running.db]
            present = [await db[c].find_one({"_id": i}, {"_id": 1}) for c, i in expected.last_ids.items()]
            if all(present):  # then count, but at most twice a second
                count_at = min(count_at, counted_at + 0.5)
            if time.monotonic() >= count_at:
                counted_at = time.monotonic()
                count_at = counted_at + 5.0
                done.docs = {name: await db[name].count_documents({}) for name in COLLECTIONS}
                if all(done.docs[name] >= docs[name] for name in COLLECTIONS):
                    done.docs_at = now
        # The symbol quoted last is read alone until it is current, then every stale one once.
        if done.cache_at is None and last_quotes and not await _stale_symbols(ctx.redis, symbols[-1:], last_quotes):
            symbols = await _stale_symbols(ctx.redis, symbols, last_quotes)
            done.cache_missing = len(symbols)
            if not symbols:
                done.cache_at = now
        if done.end is not None or ctx.listener.failed:
            return done
        if running.proc.poll() is not None:
            done.exited = running.proc.returncode
            return done
        only_quotes_left = done.outputs_at is not None and done.docs_at is not None
        await asyncio.sleep(fine_poll if only_quotes_left else poll)
    if docs is not None and running.db is not None:  # timed out: say how far the documents got
        db = ctx.mongo[running.db]
        done.docs = {name: await db[name].count_documents({}) for name in COLLECTIONS}
    return done


def event_time(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp)
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def stored_id(channel: str, doc: Mapping[str, Any]) -> str:
    """The _id enricher gives a message's document (the identities of enricher/records.py)."""
    at = utc_iso(event_time(doc["timestamp"]))
    if channel == UNDERLYING:
        return f"{doc['product']}:{doc['tick_id']}:{at}"
    if channel == OPTION_QUOTE:
        return f"{doc['symbol']}:{at}"
    return f"{doc['product']}:{doc['expiry']}:{at}"


async def _stale_symbols(redis: Redis, symbols: list[str], last: Mapping[str, str]) -> list[str]:
    """The symbols whose last quote is not yet in latest:option:* (a key only moves forward)."""
    if not symbols:
        return []
    values = await redis.mget([f"latest:option:{symbol}" for symbol in symbols])
    return [
        symbol
        for symbol, value in zip(symbols, values, strict=True)
        if value is None or orjson.loads(value).get("timestamp") != last[symbol]
    ]


async def dlq_length(redis: Redis) -> int:
    return int(await redis.llen("dlq:enrichment"))


async def buffer_disconnects(redis: Redis) -> int | None:
    stats = await redis.info("stats")
    value = stats.get("client_output_buffer_limit_disconnections")
    return None if value is None else int(value)
