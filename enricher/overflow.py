"""Backlogs for a full queue: `conflate` keeps the newest pending message per key, `spill`
parks the overflow in a Redis stream. Neither blocks the reader.

Once a channel has a backlog, every new message joins it until it is empty again, and a
refill task moves it into the queue as room appears: order is kept, and the queue never
sees a message overtake an older one. A spilled backlog survives a restart; the stream is
read again at start-up. (What the refill task already moved into the in-memory queue is
as safe as any queued message: drained at shutdown, dead-lettered at the hard deadline.)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final, Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.metrics import Metrics
from enricher.records import OPTION_CHAIN, OPTION_QUOTE
from enricher.source import RawMessage

log = structlog.get_logger("enricher.overflow")
SUPERSEDED: Final = "superseded"
SPILL_PREFIX: Final = "enricher:spill:"


class Backlog(Protocol):
    @property
    def pending(self) -> int: ...

    def add(self, message: RawMessage) -> None: ...

    async def refill(self, queue: asyncio.Queue[RawMessage]) -> None: ...

    def take_all(self) -> list[RawMessage]: ...


def conflation_key(channel: str) -> Callable[[bytes], str | None]:
    """What makes two messages the same state: (product, expiry) for a chain, the symbol
    for a quote, the product for a tick. None (unparseable) is never conflated."""
    fields = {OPTION_CHAIN: ("product", "expiry"), OPTION_QUOTE: ("symbol",)}.get(channel, ("product",))

    def key(data: bytes) -> str | None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None
        return "\x1f".join(str(doc.get(name)) for name in fields)

    return key


class ConflatingBacklog:
    def __init__(self, channel: str, metrics: Metrics) -> None:
        self._channel = channel
        self._metrics = metrics
        self._key = conflation_key(channel)
        self._waiting: OrderedDict[object, RawMessage] = OrderedDict()
        self._moving: RawMessage | None = None  # out of the backlog, not yet in the queue
        self._wake = asyncio.Event()
        self.empty = asyncio.Event()  # set while nothing waits (the shutdown drain needs it)
        self.empty.set()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def add(self, message: RawMessage) -> None:
        key: object = self._key(message.data)
        if key is None:
            key = object()  # unique: an unreadable message is never dropped for another
        if key in self._waiting:
            self._metrics.count(self._channel, SUPERSEDED)
            del self._waiting[key]  # the newer one takes the end of the line
        self._waiting[key] = message
        self.empty.clear()
        self._wake.set()

    async def refill(self, queue: asyncio.Queue[RawMessage]) -> None:
        while True:
            await self._wake.wait()
            while self._waiting:
                _, self._moving = self._waiting.popitem(last=False)
                await queue.put(self._moving)
                self._moving = None
            self._wake.clear()
            self.empty.set()

    def take_all(self) -> list[RawMessage]:
        left = [] if self._moving is None else [self._moving]
        left += self._waiting.values()
        self._waiting.clear()
        self._moving = None
        return left


class SpillingBacklog:
    """Overflow goes to the stream `enricher:spill:{channel}` (no TTL, so `volatile-*`
    eviction never takes it), capped at `max_len` entries with the trimmed count logged."""

    def __init__(self, channel: str, redis: Redis, metrics: Metrics, *, max_len: int = 1_000_000) -> None:
        self.stream = SPILL_PREFIX + channel
        self._channel = channel
        self._redis = redis
        self._metrics = metrics
        self._max_len = max_len
        self._staged: deque[RawMessage] = deque()
        self._in_stream = 0
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        return len(self._staged) + self._in_stream

    async def recover(self) -> None:
        """At start-up: a backlog left by an earlier run is processed before new messages."""
        self._in_stream = int(await self._redis.xlen(self.stream))
        if self._in_stream:
            log.warning("spill_recovered", channel=self._channel, messages=self._in_stream)
            self._wake.set()

    def add(self, message: RawMessage) -> None:
        self._staged.append(message)
        self._metrics.event("spilled")
        self._wake.set()

    async def refill(self, queue: asyncio.Queue[RawMessage]) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                try:
                    await self._write_staged()
                    await self._move(queue)
                except RedisError as exc:
                    log.warning("spill_io_failed", channel=self._channel, error=str(exc)[:200])
                    await asyncio.sleep(0.5)

    async def _write_staged(self) -> None:
        if not self._staged:
            return
        batch = [self._staged.popleft() for _ in range(min(len(self._staged), 1000))]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for message in batch:
                    pipe.xadd(self.stream, {"d": message.data, "t": repr(message.received_at)})
                await pipe.execute()
        except (RedisError, asyncio.CancelledError):
            # Not known to be written: keep it (a duplicate in the stream is harmless).
            self._staged.extendleft(reversed(batch))
            raise
        self._in_stream += len(batch)

    async def _move(self, queue: asyncio.Queue[RawMessage]) -> None:
        if not self._in_stream:
            return
        room = max(1, queue.maxsize - queue.qsize())
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrange(  # type: ignore[assignment]
            self.stream, count=min(room, 1000)
        )
        if not entries:
            self._in_stream = 0
            return
        for _, fields in entries:
            await queue.put(RawMessage(self._channel, fields[b"d"], float(fields[b"t"])))
        await self._redis.xdel(self.stream, *[entry_id for entry_id, _ in entries])
        self._in_stream -= len(entries)

    def take_all(self) -> list[RawMessage]:
        # What is in the stream stays there for the next start; only the staged ones are handed back.
        left = list(self._staged)
        self._staged.clear()
        return left
