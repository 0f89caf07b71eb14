"""Dead-letter records: every message that can't be processed lands in `dlq:enrichment`.

Records are queued in memory and written by a background task, so the subscriber and the
workers never wait on Redis to give up a message. If Redis is down the records wait in a
bounded buffer; what that bound pushes out is counted and logged, never silent.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher import __version__
from enricher.errors import honour_cancel
from enricher.metrics import Metrics
from enricher.records import CHANNELS, json_object
from enricher.source import Receipt

DLQ_KEY: Final = "dlq:enrichment"
log = structlog.get_logger("enricher.deadletter")


def payload_fields(data: bytes) -> dict[str, str]:
    """The raw payload exactly: as text when it is UTF-8, else base64 (for replay)."""
    try:
        return {"payload": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"payload_b64": base64.b64encode(data).decode("ascii")}


def payload_bytes(record: dict[str, Any]) -> bytes:
    if "payload_b64" in record:
        return base64.b64decode(record["payload_b64"])
    return str(record.get("payload", "")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    channel: str
    data: bytes
    error_type: str  # a reason code for bad input, else the exception's class name
    error: str
    attempts: int
    first_seen: float
    last_seen: float
    receipt: Receipt | None = field(default=None, compare=False)  # settled once the record is written

    def to_json(self) -> bytes:
        record: dict[str, Any] = {
            "channel": self.channel,
            **payload_fields(self.data),
            "error_type": self.error_type,
            "error": self.error,
            "attempts": self.attempts,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "enricher_version": __version__,
            # The old service's field names, kept so its DLQ tooling still reads ours.
            "task_name": f"enrich:{self.channel}",
            "timestamp": _iso(self.last_seen),
        }
        return orjson.dumps(record)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"


# Reading the list: records are read a page at a time, addressed from the tail. LPUSH never
# moves those indexes, so a daemon that dead-letters while we read neither shifts the pages
# nor adds to what we see.
PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class Entry:
    index: int  # position when read; 0 is the newest
    raw: bytes  # the list element exactly as stored, for LREM
    record: dict[str, Any]  # empty when the element is not a JSON object

    @property
    def channel(self) -> str:
        return str(self.record.get("channel", "-"))

    @property
    def error_type(self) -> str:
        return str(self.record.get("error_type", "-"))

    @property
    def payload(self) -> bytes | None:
        """The raw message to replay; None if the record has none (or a corrupt one)."""
        if self.record.get("channel") not in CHANNELS or not {"payload", "payload_b64"} & self.record.keys():
            return None
        try:
            return payload_bytes(self.record)
        except ValueError:  # binascii.Error: payload_b64 is not base64
            return None

    def matches(self, channel: str | None, error_type: str | None) -> bool:
        return (channel is None or self.channel == channel) and (error_type is None or self.error_type == error_type)


async def scan(redis: Redis) -> AsyncIterator[Entry]:
    """The list as it stood when the scan began, newest first."""
    length = int(await redis.llen(DLQ_KEY))
    for start in range(0, length, PAGE):
        stop = min(start + PAGE, length) - 1
        page = await redis.lrange(DLQ_KEY, start - length, stop - length)
        for offset, element in enumerate(page):
            raw = element if isinstance(element, bytes) else str(element).encode()
            yield Entry(start + offset, raw, json_object(raw))


async def select(redis: Redis, channel: str | None, error_type: str | None, limit: int | None) -> list[Entry]:
    """The newest `limit` records (0 or None: all) matching the filters."""
    limit = limit or None
    chosen: list[Entry] = []
    async for entry in scan(redis):
        if entry.matches(channel, error_type):
            chosen.append(entry)
            if limit is not None and len(chosen) >= limit:
                break
    return chosen


class DeadLetters:
    def __init__(self, redis: Redis, metrics: Metrics, *, max_len: int, buffer_max: int = 50000) -> None:
        self._redis = redis
        self._metrics = metrics
        self._max_len = max_len
        self._pending: deque[DeadLetter] = deque()
        self._buffer_max = buffer_max
        self._wake = asyncio.Event()
        self._finishing = False
        self.observers: list[Callable[[DeadLetter], None]] = []  # e.g. a replay pairing old and new

    def add(self, letter: DeadLetter) -> None:
        for observe in self.observers:
            observe(letter)
        if len(self._pending) >= self._buffer_max:
            dropped = self._pending.popleft()
            if dropped.receipt is not None:
                dropped.receipt.defer()  # a stream redelivers it: not lost after all
            self._metrics.event("dlq_buffer_overflow")
            log.error("dlq_buffer_overflow", buffered=len(self._pending), note="oldest record dropped")
        self._pending.append(letter)
        self._metrics.event("dead_lettered")
        self._wake.set()

    def reject(
        self,
        channel: str,
        data: bytes,
        error_type: str,
        error: str,
        attempts: int = 1,
        *,
        receipt: Receipt | None = None,
    ) -> None:
        now = time.time()
        self.add(DeadLetter(channel, data, error_type, error, attempts, now, now, receipt))

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self, retry_delay: float = 0.5) -> None:
        """Write letters as they come; after `finish()`, return once the write in flight is done."""
        while not self._finishing:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._finishing:
                written = await self.write_pending()
                honour_cancel()  # redis-py's pipeline can swallow a cancel
                if not written and not self._finishing:
                    await asyncio.sleep(retry_delay)

    def finish(self) -> None:
        """Let `run()` return after its write in flight, leaving the rest to a last `write_pending()`.

        Shutdown asks this rather than cancelling the writer: a write cut off mid-way has its batch
        pending again (it may not have landed), so the last write sent it twice if it had, and a
        replay, which pairs each record with the one letter its message got, kept the extra one.
        """
        self._finishing = True
        self._wake.set()

    async def write_pending(self) -> bool:
        """Write what is buffered; False if Redis is unreachable (the records stay buffered)."""
        # Take the records out first: add() may push the oldest out while we await.
        batch = [self._pending.popleft() for _ in range(len(self._pending))]
        if not batch:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(DLQ_KEY, *(letter.to_json() for letter in batch))
                pipe.llen(DLQ_KEY)
                pipe.ltrim(DLQ_KEY, 0, self._max_len - 1)
                _, length, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._pending.extendleft(reversed(batch))
            log.warning("dlq_write_failed", error=str(exc), buffered=len(self._pending))
            return False
        except asyncio.CancelledError:
            # Shutdown cancels this writer, then writes what is pending: a batch in flight must
            # be pending again. It may have been written already; a record twice replays once.
            self._pending.extendleft(reversed(batch))
            raise
        for letter in batch:
            if letter.receipt is not None:
                letter.receipt.settle()
        trimmed = max(0, int(length) - self._max_len)
        if trimmed:
            self._metrics.event("dlq_trimmed", trimmed)
            log.warning("dlq_trimmed", dropped=trimmed, max_len=self._max_len)
        return True
