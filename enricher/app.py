"""Wires it up: clients → queues → source + workers → ordered drain at shutdown.

The core runs without signals or a CLI: `async with Enricher(settings) as app:` starts it,
and leaving the block (or `await app.stop()`) drains and flushes it. `serve()` adds the
signal handling for `python -m enricher run`.
"""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import structlog
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher import systemd
from enricher.backoff import Backoff
from enricher.cache import Cache
from enricher.deadletter import DeadLetters
from enricher.health import HealthServer, track_dlq_length
from enricher.idempotency import Idempotency
from enricher.intake import ChannelQueue, take
from enricher.metrics import Metrics
from enricher.overflow import Backlog, ConflatingBacklog, SpillingBacklog
from enricher.pipeline import Pipeline
from enricher.pool import AnalyticsPool
from enricher.priority import LAST, TIERS, LiveFirst
from enricher.records import CHANNELS
from enricher.redact import redact_text, redact_url
from enricher.settings import Settings
from enricher.source import PubSubSource, Receipt, Source
from enricher.store import MongoStore
from enricher.streams import StreamSource
from enricher.warmup import warm_up

log = structlog.get_logger("enricher")
T = TypeVar("T")


class Enricher:
    def __init__(
        self, settings: Settings, *, source: Source | None = None, settle: Callable[[], None] | None = None
    ) -> None:
        """`settle` runs once everything is built, just before the source subscribes: the daemon
        collects and freezes its start-up heap there (`quiet_collector`), a ~25 ms pause that
        a message already arriving would wait behind."""
        self.settings = settings
        self._settle = settle
        self.metrics = Metrics()
        self.source: Source = source or _source(settings, self.metrics)
        self.store: MongoStore | None = None
        self.health: HealthServer | None = None
        self.queues: dict[str, ChannelQueue] = {}
        self._stack = AsyncExitStack()
        self._workers: list[asyncio.Task[None]] = []
        self._refills: list[asyncio.Task[None]] = []
        self._services: list[asyncio.Task[None]] = []
        self._letters_writer: asyncio.Task[None] | None = None  # one of the services
        self._surfaces: list[asyncio.Task[None]] = []
        self._intake: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()
        self._stopped = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, ready_timeout: float = 30.0) -> None:
        s = self.settings
        log.info("starting", settings=s.redacted())
        if s.http_port:
            # First, so /healthz answers during start-up and /metrics during the drain.
            self.health = HealthServer(self, s.http_port, histograms=self.metrics.histograms)
            await self.health.start()
            self._stack.push_async_callback(self.health.stop)
        self.redis = Redis.from_url(s.redis_url)  # writes; the source reads on its own connection
        self._stack.push_async_callback(self.redis.aclose)
        self.dead_letters = DeadLetters(self.redis, self.metrics, max_len=s.dlq_max)
        self.live_first = LiveFirst(s.live_first)
        self.idempotency = Idempotency(self.redis, inflight_ttl=s.idem_inflight_ttl, done_ttl=s.idem_done_ttl)
        if s.persist:
            self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                s.mongo_url,
                tz_aware=True,
                serverSelectionTimeoutMS=int(s.mongo_timeout * 1000),
                timeoutMS=int(s.mongo_op_timeout * 1000),  # bounds every operation, so no write hangs
                appname="enricher",
            )
            self._stack.push_async_callback(self.mongo.close)
            self.store = MongoStore(
                self.mongo[s.mongo_db],
                metrics=self.metrics,
                dead_letters=self.dead_letters,
                on_durable=self.idempotency.mark_done,
                flush_interval=s.flush_interval,
                max_docs=s.flush_max_docs,
                buffer_max=s.store_buffer_max,
                buffer_max_bytes=s.store_buffer_max_bytes,
                backpressure_bytes=s.store_backpressure_bytes,
                concurrency=s.mongo_concurrency,
                yield_to=self.live_first.wait,
            )
        self.pool = AnalyticsPool(s.pool_workers, s.pool_min_strikes, self.metrics)
        self._stack.callback(self.pool.close)
        await self.pool.start()
        warmed = warm_up(s, s.warm_up) if s.warm_up else 0.0  # before the intake: see warmup.py
        self.pipeline = Pipeline(
            s,
            cache=Cache(self.redis),
            idempotency=self.idempotency,
            store=self.store,
            dead_letters=self.dead_letters,
            pool=self.pool,
            metrics=self.metrics,
        )
        for channel in CHANNELS:
            backlog = await self._backlog(channel)
            queue = ChannelQueue(channel, s.queue_size, s.overflow(channel), self.metrics, self.dead_letters, backlog)
            self.queues[channel] = queue
            self.live_first.watch(TIERS[channel], queue.queue)
            if backlog is not None:
                self._refills.append(asyncio.create_task(backlog.refill(queue.queue), name=f"refill:{channel}"))
            for index in range(s.workers):
                self._workers.append(asyncio.create_task(self._work(queue), name=f"worker:{channel}:{index}"))
        self._surfaces.append(asyncio.create_task(self._write_surfaces(), name="surfaces"))
        self._letters_writer = asyncio.create_task(self.dead_letters.run(), name="deadletters")
        self._services.append(self._letters_writer)
        self._services.append(
            asyncio.create_task(track_dlq_length(self.redis, self.metrics.histograms), name="dlq_length")
        )
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            self._services.append(asyncio.create_task(_watchdog(watchdog), name="watchdog"))
        if self.store is not None:
            self._services.append(asyncio.create_task(self.store.run(), name="store"))
            self._services.append(asyncio.create_task(self._create_indexes(), name="indexes"))
        if self._settle is not None:
            self._settle()
        self._intake = asyncio.create_task(self._read(), name="intake")
        await self._until_ready(ready_timeout)
        systemd.ready()
        log.info(
            "ready",
            channels=list(CHANNELS),
            workers=s.workers,
            pool=s.pool_workers,
            persist=s.persist,
            warm_up_ms=round(warmed * 1000),
        )

    async def _backlog(self, channel: str) -> Backlog | None:
        policy = self.settings.overflow(channel)
        if policy == "conflate":
            return ConflatingBacklog(channel, self.metrics)
        if policy == "spill":
            spill = SpillingBacklog(channel, self.redis, self.metrics)
            try:
                await spill.recover()
            except RedisError as exc:  # Redis not up yet: the source will wait for it too
                log.warning("spill_recover_failed", channel=channel, error=redact_text(str(exc)))
            return spill
        return None

    async def _until_ready(self, timeout: float) -> None:
        waits = [self.source.ready.wait()]
        if self.store is not None:
            waits.append(self.store.indexes_ready.wait())
        ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*waits))
        assert self._intake is not None
        watched: list[asyncio.Future[Any]] = [ready, self._intake]
        done, _ = await asyncio.wait(watched, timeout=timeout, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            ready.add_done_callback(_retrieve)
        if self._intake in done:
            self._intake.result()  # the source died: raise its error here
        elif ready not in done:
            log.warning("not_ready_yet", timeout_s=timeout, note="continuing; Redis or MongoDB is slow to answer")

    async def _create_indexes(self) -> None:
        assert self.store is not None
        backoff = Backoff(base=0.2, cap=10.0)
        while True:
            try:
                await self.store.ensure_indexes()
                return
            except Exception as exc:  # MongoDB not reachable yet: the live path runs meanwhile
                log.warning("index_creation_failed", error=redact_text(str(exc))[:300])
                await asyncio.sleep(backoff.next_delay())

    async def _read(self) -> None:
        queues = self.queues
        if self.source.redelivers:  # the backlog waits in the source, not in an overflow policy
            async for message in self.source.messages():
                await queues[message.channel].put(message)
            return
        async for message in self.source.messages():
            queues[message.channel].offer(message)

    async def _work(self, queue: ChannelQueue) -> None:
        handle, channel = self.pipeline.handle, queue.channel
        limit, max_bytes = self.settings.batch_max, self.settings.batch_max_bytes
        live_first, tier = self.live_first, TIERS[channel]
        while True:
            # Wait for earlier tiers with the messages still queued, so later tiers see them
            # (priority.py), and so the batch takes everything that arrived meanwhile: a feed
            # second's eight chains come interleaved with ticks, and taken before the wait they
            # went as two or three batches, each with its own round trips and model call.
            await queue.queue.filled()
            if tier and self.store is not None:  # chains and quotes, not ticks: see MongoStore.room
                await self.store.room()
            await live_first.wait(tier)
            batch = take(queue.queue, limit, max_bytes)
            if not batch:  # another worker of this channel took them
                continue
            try:
                with live_first.batch(tier):
                    await handle(channel, batch)
            except asyncio.CancelledError:
                # The hard deadline cut this batch off mid-way: some of it may be stored, some
                # not. Dead-letter all of it; a replay is idempotent.
                for raw in batch:
                    self._cut_off(channel, raw.data, raw.receipt, "cancelled mid-batch at the deadline")
                raise
            except Exception:  # a bug in the pipeline: log it, keep the worker alive
                log.exception("batch_failed", channel=channel, size=len(batch))
                for raw in batch:
                    self.dead_letters.reject(
                        channel, raw.data, "internal_error", "unexpected error; see logs", receipt=raw.receipt
                    )
            finally:
                for _ in batch:
                    queue.queue.task_done()

    async def _write_surfaces(self) -> None:
        """The surface keys of the products batches changed, once the live tiers are idle.

        Each is rendered from the whole product, so one write covers every batch since the
        last, and a chain batch publishes without first rendering and writing its surfaces.
        """
        changed, live_first = self.pipeline.surfaces_changed, self.live_first
        interval, clock = self.settings.surface_interval, asyncio.get_running_loop().time
        written = -math.inf
        while True:
            await changed.wait()
            # At most one write per interval: in a burst every quote batch changes every
            # product's surface, and rewriting them all after each batch kept Redis busy.
            if (wait := written + interval - clock()) > 0.0:
                await asyncio.sleep(wait)
            await live_first.wait(LAST)
            changed.clear()
            written = clock()
            try:
                await self.pipeline.write_surfaces()
            except Exception:  # a bug in rendering: log it, keep the writer alive
                log.exception("surface_render_failed")

    def _cut_off(self, channel: str, data: bytes, receipt: Receipt | None, why: str) -> None:
        """Not finished by the deadline: a stream keeps it for redelivery, else it is dead-lettered."""
        if receipt is not None:
            receipt.defer()
        else:
            self.dead_letters.reject(channel, data, "shutdown", why)

    async def wait(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; if the intake dies first, stop and raise its error."""
        assert self._intake is not None
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, self._intake], return_when="FIRST_COMPLETED")
        stopper.cancel()
        if self._intake in done and not stop.is_set():
            error = self._intake.exception()
            if error is not None:
                raise error

    async def stop(self) -> None:
        async with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop intake, drain the queues, flush, then close; every step has a deadline."""
        grace = self.settings.grace_period
        deadline = time.monotonic() + grace

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        log.info("stopping", grace_s=grace)
        systemd.stopping()
        await _bounded("unsubscribe", self.source.stop(), 5.0)
        if self._intake is not None:
            await _bounded("intake", asyncio.shield(self._intake), remaining())
            self._intake.cancel()
        drains = [asyncio.ensure_future(_drained(queue)) for queue in self.queues.values()]
        if drains:
            await asyncio.wait(drains, timeout=remaining())
        for task in drains:
            task.cancel()
        await _bounded("refills", _cancel(self._refills), 5.0)
        await _bounded("workers", _cancel(self._workers), 5.0)
        if self._surfaces:  # started: the last batches' surfaces, once their writer has stopped
            await _bounded("surfaces", _cancel(self._surfaces), 5.0)
            await _bounded("surfaces", self.pipeline.write_surfaces(), remaining() + 1.0)
        cut_off = 0
        for queue in self.queues.values():
            for raw in queue.take_all():
                cut_off += 1
                self._cut_off(queue.channel, raw.data, raw.receipt, "not processed before the deadline")
        if self.store is not None:
            await _bounded("flush", self.store.flush(deadline), remaining() + 1.0)
        # The dead-letter writer finishes the write it has in flight, then stops (see
        # DeadLetters.finish); cancelled below only if that takes too long.
        if self._letters_writer is not None:
            self.dead_letters.finish()
            await _bounded("dead_letter_writer", asyncio.shield(self._letters_writer), 2.0)
        # The background writer stops before the leftovers are collected: a batch it still has
        # in flight goes back into the buffer, instead of being re-queued after take_all().
        await _bounded("services", _cancel(self._services), 5.0)
        if self.store is not None:
            left = self.store.take_all()
            for entry in left:
                cut_off += 1
                self._cut_off(entry.channel, entry.raw, entry.receipt, "not stored before the deadline")
            if self.source.redelivers:  # let the redelivery through at once, not after inflight_ttl
                marks = [entry.mark for entry in left if entry.mark]
                await _bounded("release_marks", self.idempotency.release(marks), 5.0)
        if self.dead_letters.pending:
            written = await _bounded("dead_letters", self.dead_letters.write_pending(), 5.0)
            if not written:
                log.error("dead_letters_lost_at_exit", count=self.dead_letters.pending, reason="Redis unreachable")
        await _bounded("source", self.source.close(), 5.0)
        await _bounded("close", self._stack.aclose(), 10.0)
        log.info("stopped", cut_off=cut_off, summary=self.metrics.summary())


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Collect a cancelled gather's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _source(settings: Settings, metrics: Metrics) -> Source:
    if settings.source == "streams":
        return StreamSource(settings, metrics)
    return PubSubSource(settings.redis_url, CHANNELS, metrics)


async def _watchdog(interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings and systemd restarts us."""
    while True:
        systemd.watchdog_ping()
        await asyncio.sleep(interval)


async def _drained(queue: ChannelQueue) -> None:
    """The queue is empty and idle, and so is a conflating backlog (a spill stream stays put)."""
    await queue.queue.join()
    if isinstance(queue.backlog, ConflatingBacklog):
        await queue.backlog.empty.wait()
        await queue.queue.join()


async def _bounded(step: str, awaitable: Awaitable[T], timeout: float) -> T | None:
    """Await one shutdown step; past `timeout` cancel it, log it by name and move on.

    Not `asyncio.wait_for`: that waits for the cancelled step to finish, and a step that
    swallows its cancel (redis-py can) would hold up every step after it for good.
    """
    work = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({work}, timeout=timeout)
    except asyncio.CancelledError:
        work.cancel()
        raise  # we are being cancelled ourselves
    if not work.done():
        work.cancel()
        log.error("shutdown_step_timed_out", step=step, timeout_s=round(timeout, 3))
        await asyncio.wait({work}, timeout=1.0)  # a moment to unwind, no more
        work.add_done_callback(_retrieve)
        return None
    try:
        return work.result()
    except asyncio.CancelledError:
        return None  # the step was cancelled, not us
    except Exception as exc:  # a failed step must not stop the others (e.g. the source's last error)
        log.error("shutdown_step_failed", step=step, error=redact_text(repr(exc))[:300])
    return None


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error("task_failed", task=task.get_name(), error=repr(result))
    tasks.clear()


# Collections after 20,000 net allocations, not 700: every batch allocates thousands of small
# dicts, and the default thresholds ran a full collection over the whole heap often enough to
# show in the tail (in-process, 600 feed seconds: chain batches max 61-68 ms with the
# defaults, 21-23 ms with these; medians unchanged).
GC_THRESHOLDS: Final = (20_000, 20, 50)


def quiet_collector() -> None:
    """Once start-up has built everything: move what exists to the permanent generation, and
    collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def dump_tasks() -> None:
    """SIGUSR1: log where every task is waiting, for a daemon that seems stuck."""
    for task in asyncio.all_tasks():
        frames = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack(limit=12)]
        log.warning("task_stack", task=task.get_name(), frames=frames)


async def serve(settings: Settings) -> int:
    """`python -m enricher run`: SIGTERM or SIGINT stops intake, drains, flushes, exits 0."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    try:
        async with Enricher(settings, settle=quiet_collector) as app:
            await app.wait(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
    log.info("exit", redis=redact_url(settings.redis_url))
    return 0
