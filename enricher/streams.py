"""The Redis Streams source: at-least-once input, shared by any number of instances.

Each channel is split into `stream_partitions` streams by product hash (partitions.py), all
read through one consumer group. An instance reads only the partitions whose lease it holds
(leases.py), so every message of a product reaches the one instance that holds the
product's candles, chain snapshots and surface.

A message is acknowledged (XACK) only when its results are durable: MongoDB acknowledged
them (or the cache was written, with persistence off), or it was dead-lettered, or it was a
duplicate of one already done. Anything else stays in the group's pending list and comes
back: on restart under the same consumer name, or to whoever takes the partition over, or
after `stream_claim_idle` seconds through XAUTOCLAIM. The idempotency marks turn that
at-least-once delivery into one set of results.

The intake waits for queue space before it reads more (no overflow policy applies): the
backlog stays in Redis, where it belongs, not in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from enricher.backoff import Backoff
from enricher.errors import honour_cancel
from enricher.leases import Leases, keep_alive
from enricher.metrics import Metrics
from enricher.partitions import streams_of
from enricher.redact import redact_text, redact_url
from enricher.settings import Settings
from enricher.source import RawMessage

log = structlog.get_logger("enricher.streams")

FIELD: Final = b"data"  # each entry holds the message exactly as published, in one field
BLOCK_MS: Final = 250  # how long one XREADGROUP waits; bounds how fast stop() and hand-overs act
TRIM_EVERY: Final = 5.0
SOCKET_TIMEOUT: Final = 10.0


def consumer_name(settings: Settings) -> str:
    return settings.consumer or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class StreamReceipt:
    acks: StreamAcks
    stream: str
    entry: bytes

    def settle(self) -> None:
        self.acks.settle(self.stream, self.entry)

    def defer(self) -> None:
        self.acks.defer(self.stream, self.entry)


class StreamAcks:
    """What was handed out and not yet settled, and the XACKs waiting to go (one per stream per flush)."""

    def __init__(self, redis: Redis, group: str, metrics: Metrics, linger: float = 0.02) -> None:
        self._redis = redis
        self._group = group
        self._metrics = metrics
        self._linger = linger
        self.inflight: dict[str, set[bytes]] = defaultdict(set)
        self._acks: dict[str, list[bytes]] = defaultdict(list)
        self._wake = asyncio.Event()

    def receipt(self, stream: str, entry: bytes) -> StreamReceipt:
        self.inflight[stream].add(entry)
        return StreamReceipt(self, stream, entry)

    def settle(self, stream: str, entry: bytes) -> None:
        self.inflight[stream].discard(entry)
        self._acks[stream].append(entry)
        self._wake.set()

    def defer(self, stream: str, entry: bytes) -> None:
        self.inflight[stream].discard(entry)
        self._metrics.event("stream_deferred")

    def idle(self, streams: Iterable[str]) -> bool:
        return not any(self.inflight.get(stream) for stream in streams)

    @property
    def waiting(self) -> int:
        return sum(len(entries) for entries in self._acks.values())

    async def run(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._linger)  # a few batches' acks in one round trip
            self._wake.clear()
            flushed = await self.flush()
            honour_cancel()  # redis-py can swallow a cancel (leases.keep_alive)
            if flushed:
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()

    async def flush(self) -> bool:
        """Send every waiting XACK; False (they stay waiting) if Redis is unreachable."""
        batch, self._acks = self._acks, defaultdict(list)
        if not batch:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, entries in batch.items():
                    pipe.xack(stream, self._group, *entries)
                await pipe.execute()
        except (RedisError, OSError, asyncio.CancelledError) as exc:
            # Not known to be sent: waiting again (close() cancels the flusher, then flushes).
            for stream, entries in batch.items():
                self._acks[stream][:0] = entries
            if isinstance(exc, asyncio.CancelledError):
                raise
            honour_cancel()
            log.warning("stream_ack_failed", error=redact_text(str(exc))[:200], waiting=self.waiting)
            return False
        self._metrics.event("stream_acked", sum(len(entries) for entries in batch.values()))
        return True


class StreamSource:
    redelivers = True
    trim_every = TRIM_EVERY

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._url = settings.redis_url
        # A socket timeout well above BLOCK_MS: a Redis that stops answering (no RST, e.g. a
        # network partition) is noticed and reconnected, instead of one read hanging forever.
        self._redis = Redis.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5.0)
        self._group = settings.stream_group
        self.me = consumer_name(settings)
        self._metrics = metrics
        self._batch = settings.batch_max
        self._claim_idle_ms = int(settings.stream_claim_idle * 1000)
        self._claim_every = settings.stream_claim_idle / 2
        self._trim = settings.stream_trim
        count = settings.stream_partitions
        self._streams = {k: streams_of(settings.stream_prefix, k, count) for k in range(count)}
        self._channel = {stream: channel for streams in self._streams.values() for stream, channel in streams.items()}
        self.acks = StreamAcks(self._redis, self._group, metrics)
        self.leases = Leases(self._redis, self._group, self.me, count, settings.stream_lease_ttl)
        self._lease_every = settings.stream_lease_ttl / 3
        self._changed = asyncio.Event()
        self.reading: set[int] = set()  # partitions read now
        # Given up: released once what we took from them is settled, or at the deadline (MongoDB
        # down must not pin a partition here; the new holder then claims what is left).
        self._draining: dict[int, float] = {}
        self._drain_for = settings.stream_claim_idle
        self._forget_ms = int(2 * settings.stream_lease_ttl * 1000)
        self._claimed: deque[RawMessage] = deque()
        self._claimed_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.ready = asyncio.Event()

    async def stop(self) -> None:
        self._stopping = True  # the read loop ends within one BLOCK_MS

    async def close(self) -> None:
        """Send the last acknowledgements, give the leases back, leave the group's membership."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)  # not gather: a swallowed cancel must not hang us
        try:
            if not await self.acks.flush():
                log.error("stream_acks_lost_at_exit", count=self.acks.waiting, note="those entries will be redelivered")
            await self.leases.leave()
        except (RedisError, OSError) as exc:
            log.warning("stream_close_failed", error=redact_text(str(exc))[:200])
        finally:
            await self._redis.aclose()

    async def messages(self) -> AsyncIterator[RawMessage]:
        backoff = Backoff(base=0.1, cap=5.0)
        while not self._stopping:
            try:
                await self._join()
                self.ready.set()
                backoff.reset()
                async for message in self._read():
                    yield message
                return
            except (RedisError, OSError) as exc:
                honour_cancel()
                self.ready.clear()
                self._metrics.event("redis_reconnects")
                delay = backoff.next_delay()
                log.warning(
                    "redis_disconnected", url=redact_url(self._url), error=redact_text(str(exc)), retry_in_s=delay
                )
                await asyncio.sleep(delay)

    async def _join(self) -> None:
        """Create the group on every stream (from the start: nothing the bridge wrote is skipped).

        Again after every reconnect: a Redis that restarted without its data has no group.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._channel:
                pipe.xgroup_create(stream, self._group, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
                raise result
        if self._tasks:
            return
        await self.leases.round()
        self._tasks = [
            asyncio.create_task(keep_alive(self.leases, self._lease_every, self._changed), name="leases"),
            asyncio.create_task(self.acks.run(), name="stream_acks"),
        ]
        if self._trim:
            self._tasks.append(asyncio.create_task(self._trim_forever(), name="stream_trim"))
        log.info("stream_consumer", group=self._group, consumer=self.me, partitions=len(self._streams))

    async def _read(self) -> AsyncIterator[RawMessage]:
        while not self._stopping:
            await self._rebalance()
            if time.monotonic() - self._claimed_at >= self._claim_every:
                await self._claim_idle(self.reading, self._claim_idle_ms)
            while self._claimed:
                yield self._claimed.popleft()
            streams: dict[Any, Any] = {stream: ">" for k in sorted(self.reading) for stream in self._streams[k]}
            if not streams:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), BLOCK_MS / 1000)
                self._changed.clear()
                continue
            reply: Any = await self._redis.xreadgroup(self._group, self.me, streams, count=self._batch, block=BLOCK_MS)
            received = time.time()
            for name, entries in reply or ():
                stream = name.decode()
                for entry, fields in entries:
                    yield self._message(stream, entry, fields, received)

    def _message(self, stream: str, entry: bytes, fields: dict[bytes, bytes] | None, received: float) -> RawMessage:
        data = (fields or {}).get(FIELD)
        if data is None:  # not written by a producer of ours: keep what it holds, for the dead letter
            data = orjson.dumps({_text(k): _text(v) for k, v in (fields or {}).items()})
        return RawMessage(self._channel[stream], data, received, self.acks.receipt(stream, entry))

    async def _rebalance(self) -> None:
        """Start partitions we now hold; drain and hand back those we no longer should."""
        ours = self.leases.held & self.leases.wanted
        for k in sorted(ours - self.reading):
            self._draining.pop(k, None)
            # Whatever is pending on it was taken by someone who is gone or gave it back:
            # claim it all now, oldest first, before reading anything new.
            await self._claim_idle({k}, 0)
            self.reading.add(k)
            log.info("partition_taken", partition=k, consumer=self.me)
        gone = self.reading - ours
        self.reading -= gone
        now = time.monotonic()
        for k in gone:
            self._draining[k] = now + self._drain_for
        for k, deadline in sorted(self._draining.items()):
            settled = self.acks.idle(self._streams[k])
            if settled or now >= deadline:
                del self._draining[k]
                if k in self.leases.held and k not in self.leases.wanted:
                    await self.leases.release([k])
                log.info("partition_handed_back", partition=k, consumer=self.me, settled=settled)

    async def _claim_idle(self, partitions: Iterable[int], min_idle_ms: int) -> None:
        self._claimed_at = time.monotonic()
        for k in partitions:
            for stream in self._streams[k]:
                await self._claim_stream(stream, min_idle_ms)

    async def _claim_stream(self, stream: str, min_idle_ms: int) -> None:
        cursor: bytes | str = "0-0"
        inflight = self.acks.inflight[stream]
        received = time.time()
        while True:
            reply = await self._redis.xautoclaim(
                stream, self._group, self.me, min_idle_ms, start_id=cursor, count=self._batch
            )
            cursor, entries = reply[0], reply[1]
            gone = []
            for entry, fields in entries:
                if entry is None:
                    continue
                if fields is None:  # trimmed away while pending (Redis 6.2 still lists it)
                    gone.append(entry)
                elif entry not in inflight:  # a copy still queued here only had its idle time reset
                    self._metrics.event("stream_reclaimed")
                    self._claimed.append(self._message(stream, entry, fields, received))
            if gone:
                await self._redis.xack(stream, self._group, *gone)
            if cursor in (b"0-0", "0-0"):
                return

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self.trim_every)
            for k in sorted(self.reading):
                for stream in self._streams[k]:
                    try:
                        await self._trim_stream(stream)
                    except (RedisError, OSError) as exc:
                        log.warning("stream_trim_failed", stream=stream, error=redact_text(str(exc))[:200])
                    honour_cancel()  # redis-py can swallow a cancel (leases.keep_alive)

    async def _trim_stream(self, stream: str) -> None:
        """XTRIM MINID below the oldest entry our group has not acknowledged: acknowledged entries go."""
        groups = await self._redis.xinfo_groups(stream)
        ours = next((g for g in groups if _text(_get(g, "name")) == self._group), None)
        if ours is None:
            return
        if int(_get(ours, "pending")):
            oldest = (await self._redis.xpending(stream, self._group))["min"]
            if oldest is None:  # acknowledged since XINFO: next round
                return
            keep_from = _text(oldest)
        else:
            keep_from = _after(_text(_get(ours, "last-delivered-id")))
        trimmed = await self._redis.xtrim(stream, minid=keep_from, approximate=False)
        if trimmed:
            self._metrics.event("stream_trimmed", int(trimmed))
        await self._forget_consumers(stream)

    async def _forget_consumers(self, stream: str) -> None:
        """Delete consumers that are gone and hold nothing (each restart under hostname-pid adds one)."""
        for consumer in await self._redis.xinfo_consumers(stream, self._group):
            name = _text(_get(consumer, "name"))
            if name == self.me or name in self.leases.members or int(_get(consumer, "pending")):
                continue
            if int(_get(consumer, "idle")) > self._forget_ms:
                await self._redis.xgroup_delconsumer(stream, self._group, name)


def _get(record: dict[Any, Any], key: str) -> Any:
    return record.get(key, record.get(key.encode()))


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _after(entry: str) -> str:
    """The smallest stream ID after `entry` ("ms-seq")."""
    ms, _, seq = entry.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
