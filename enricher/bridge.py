"""`python -m enricher bridge`: today's pub/sub feed, copied into the partitioned streams.

It subscribes to the three `market:*` channels and XADDs every message, unchanged, into
`{prefix}{channel}:{partition}`, pipelined (one round trip per batch). It keeps no state, so
any number of enrichers can consume behind one bridge, and it can restart at any time.

What it cannot fix is pub/sub itself: a message published while the bridge is down or
reconnecting is lost, as it was for the old worker. Once a message is in a stream, though,
enricher downtime loses nothing: the consumer group keeps the backlog until it is read and
acknowledged. Run the bridge next to Redis, under a supervisor that restarts it at once, or
have the feed write to the streams itself (`python -m enricher feed --streams`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.backoff import Backoff
from enricher.errors import honour_cancel
from enricher.intake import next_batch
from enricher.metrics import Metrics
from enricher.partitions import stream_for
from enricher.records import CHANNELS
from enricher.redact import redact_text, redact_url
from enricher.settings import Settings
from enricher.source import PubSubSource, RawMessage
from enricher.streams import FIELD

log = structlog.get_logger("enricher.bridge")
BATCH = 1000
DRAIN_TIMEOUT = 10.0  # seconds to write what was received before the stop


class StreamWriter:
    """XADD (channel, payload) pairs to their partition's stream, capped at about `maxlen` entries."""

    def __init__(self, redis: Redis, prefix: str, partitions: int, maxlen: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._partitions = partitions
        self._maxlen = maxlen

    async def write(self, messages: Sequence[tuple[str, bytes]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                stream = stream_for(self._prefix, channel, data, self._partitions)
                pipe.xadd(stream, {FIELD: data}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()


def writer_for(redis: Redis, settings: Settings) -> StreamWriter:
    return StreamWriter(redis, settings.stream_prefix, settings.stream_partitions, settings.stream_maxlen)


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.metrics = Metrics()
        self.source = PubSubSource(settings.redis_url, CHANNELS, self.metrics)
        self._redis = Redis.from_url(settings.redis_url)
        self._writer = writer_for(self._redis, settings)
        self._url = settings.redis_url
        self._queue: asyncio.Queue[RawMessage] = asyncio.Queue()
        self.forwarded = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until `stop`; then unsubscribe, forward what was still delivered, and return."""
        reader = asyncio.create_task(self._read(), name="bridge_read")
        writer = asyncio.create_task(self._write(), name="bridge_write")
        stopper = asyncio.create_task(stop.wait())
        announce = asyncio.create_task(self._announce())
        try:
            await asyncio.wait([reader, stopper], return_when="FIRST_COMPLETED")
            await self.source.stop()
            await reader  # the source drains until Redis confirms the unsubscribe
            try:  # bounded: with Redis gone, what is left can't be written anyway
                await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT)
            except TimeoutError:
                log.error("bridge_lost_at_exit", count=self._queue.qsize(), reason="Redis unreachable")
        finally:
            for task in (reader, writer, stopper, announce):
                task.cancel()
            await asyncio.gather(reader, writer, stopper, announce, return_exceptions=True)
            await self._redis.aclose()

    async def _read(self) -> None:
        async for message in self.source.messages():
            self._queue.put_nowait(message)  # never block the subscriber (PITFALLS: output buffer)

    async def _write(self) -> None:
        backoff = Backoff(base=0.05, cap=2.0)
        while True:
            batch = await next_batch(self._queue, BATCH)
            while True:
                try:
                    await self._writer.write([(raw.channel, raw.data) for raw in batch])
                    break
                except (RedisError, OSError) as exc:  # Redis away: the subscription is down too
                    honour_cancel()
                    log.warning("bridge_write_failed", error=redact_text(str(exc))[:200], batch=len(batch))
                    await asyncio.sleep(backoff.next_delay())
            backoff.reset()
            self.forwarded += len(batch)
            for raw in batch:
                self.metrics.count(raw.channel, "forwarded")
                self._queue.task_done()

    async def _announce(self) -> None:
        await self.source.ready.wait()
        log.info("bridge_ready", channels=list(CHANNELS))


async def run_bridge(settings: Settings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bridge = Bridge(settings)
    started = time.monotonic()
    log.info(
        "bridge_started",
        redis=redact_url(settings.redis_url),
        prefix=settings.stream_prefix,
        partitions=settings.stream_partitions,
        maxlen=settings.stream_maxlen,
    )
    await bridge.run(stop)
    log.info(
        "bridge_stopped",
        forwarded=bridge.forwarded,
        summary=bridge.metrics.summary(),
        seconds=round(time.monotonic() - started, 3),
    )
    return 0
