"""Bounded per-channel queues between the source and the workers.

The reader must never await a full queue: the backlog would move into Redis's pub/sub output
buffer, and Redis cuts a subscriber off at 32 MB (`client-output-buffer-limit pubsub`). So
`offer()` never blocks, and a full queue applies the channel's policy:

- `deadletter` (default): the new message goes to `dlq:enrichment` with error `queue_full`,
  where `enricher dlq replay` can process it later. Nothing is lost.
- `drop_newest`: the new message is dropped, counted and logged.
- `drop_oldest`: the oldest queued message is dropped, counted and logged; the new one queues.
- `conflate`: only the newest pending message per key waits (per product and expiry for
  chains, symbol for quotes, product for ticks); superseded ones are counted, not stored.
- `spill`: the overflow waits in the Redis stream `enricher:spill:{channel}`. Nothing is lost.

The last two are backlogs (overflow.py): while one holds messages, new ones join it, so
they reach the workers in arrival order.
"""

from __future__ import annotations

import asyncio

import structlog

from enricher.deadletter import DeadLetters
from enricher.metrics import DROPPED, OVERFLOW, RECEIVED, Metrics
from enricher.overflow import Backlog
from enricher.source import RawMessage

log = structlog.get_logger("enricher.intake")


class PeakQueue(asyncio.Queue[RawMessage]):
    """An asyncio.Queue that remembers the most items it has held, and can be waited on
    without taking anything. Every way in (put, put_nowait, a backlog's refill) goes through
    `_put`, every way out through `_get`: the hooks asyncio's own LifoQueue and PriorityQueue
    override."""

    peak = 0

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._filled = asyncio.Event()

    def _put(self, item: RawMessage) -> None:
        super()._put(item)
        self.peak = max(self.peak, self.qsize())
        self._filled.set()

    def _get(self) -> RawMessage:
        item = super()._get()
        if not self.qsize():
            self._filled.clear()
        return item

    async def filled(self) -> None:
        """Until the queue holds a message (at once if it does)."""
        await self._filled.wait()


class ChannelQueue:
    def __init__(
        self,
        channel: str,
        capacity: int,
        policy: str,
        metrics: Metrics,
        dead_letters: DeadLetters,
        backlog: Backlog | None = None,
    ) -> None:
        self.channel = channel
        self.capacity = capacity
        self.policy = policy
        self.backlog = backlog
        self.queue: PeakQueue = PeakQueue(capacity)
        self._metrics = metrics
        self._dead = dead_letters
        self._overflows = 0

    @property
    def peak_depth(self) -> int:
        """The most messages the queue has held at once."""
        return self.queue.peak

    def offer(self, message: RawMessage) -> None:
        metrics = self._metrics
        metrics.count(self.channel, RECEIVED)
        metrics.last_message_at[self.channel] = message.received_at
        backlog = self.backlog
        if backlog is None or not backlog.pending:  # else new messages join the backlog, in order
            try:
                self.queue.put_nowait(message)
                return
            except asyncio.QueueFull:
                pass
        metrics.count(self.channel, OVERFLOW)
        if backlog is not None:
            backlog.add(message)
            return
        self._overflows += 1
        if self._overflows == 1 or self._overflows % 1000 == 0:
            log.warning("queue_full", channel=self.channel, policy=self.policy, overflows=self._overflows)
        if self.policy == "deadletter":
            self._dead.reject(self.channel, message.data, "queue_full", f"queue of {self.capacity} full")
        elif self.policy == "drop_newest":
            metrics.count(self.channel, DROPPED)
        else:
            self.queue.get_nowait()
            self.queue.task_done()
            metrics.count(self.channel, DROPPED)
            self.queue.put_nowait(message)

    async def put(self, message: RawMessage) -> None:
        """For a source that keeps its backlog (streams): wait for space instead of overflowing."""
        self._metrics.count(self.channel, RECEIVED)
        self._metrics.last_message_at[self.channel] = message.received_at
        await self.queue.put(message)

    def depth(self) -> int:
        return self.queue.qsize() + (self.backlog.pending if self.backlog else 0)

    def take_all(self) -> list[RawMessage]:
        """At the hard deadline: what is still queued, for dead-lettering."""
        left = self.backlog.take_all() if self.backlog else []
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
            self.queue.task_done()
        return left


async def next_batch(queue: asyncio.Queue[RawMessage], limit: int, max_bytes: int | None = None) -> list[RawMessage]:
    """Wait for one message, then take whatever else is already queued (see `take`)."""
    first = await queue.get()
    return take(queue, limit, max_bytes, [first])


def take(
    queue: asyncio.Queue[RawMessage], limit: int, max_bytes: int | None = None, batch: list[RawMessage] | None = None
) -> list[RawMessage]:
    """What is queued now, without waiting: after `batch` (if given), up to `limit` messages
    in all and, if given, until their payloads reach `max_bytes` (the message that reaches it
    included). Empty if the queue is.

    The byte bound keeps a burst of big chains from being parsed, modelled and encoded all at
    once: 250 chains of 200 strikes in one batch took the process tree to 481 MiB without
    persistence; 4 MiB batches 274 MiB, 1 MiB batches 215 MiB (bench.throughput --big).
    """
    batch = [] if batch is None else batch
    size = sum(len(message.data) for message in batch)
    while len(batch) < limit and (max_bytes is None or size < max_bytes):
        try:
            message = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        batch.append(message)
        size += len(message.data)
    return batch
