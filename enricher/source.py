"""Where raw messages come from. A source yields `RawMessage`s; the pipeline doesn't care how.

`PubSubSource` is DeltaStream's transport today: at-most-once Redis pub/sub. It reads on a
connection of its own (a subscribed RESP2 connection can run nothing else; resp.py), pings
it when quiet, rebuilds the subscription with backoff when Redis goes away, and on `stop()`
unsubscribes and keeps reading until Redis confirms, so every message published before
that is still delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from enricher.backoff import Backoff
from enricher.metrics import Metrics
from enricher.redact import redact_text, redact_url
from enricher.resp import SubscriberConnection, command

log = structlog.get_logger("enricher.source")


class Receipt(Protocol):
    """How a message from a source that redelivers (Redis Streams) is let go of."""

    def settle(self) -> None:
        """Its results are durable (stored, or dead-lettered): the source may forget it."""

    def defer(self) -> None:
        """Not finished here (shutdown, or another delivery holds it): leave it for redelivery."""


# Not frozen, though nothing changes one: a frozen dataclass sets each field through
# object.__setattr__, and one is built per message (0.49 µs frozen, 0.13 µs not).
@dataclass(slots=True, eq=False)
class RawMessage:
    channel: str
    data: bytes
    received_at: float  # wall clock, for end-to-end latency
    receipt: Receipt | None = None  # None: at-most-once (pub/sub), nothing to acknowledge


def settle(message: RawMessage) -> None:
    if message.receipt is not None:
        message.receipt.settle()


def defer(message: RawMessage) -> None:
    if message.receipt is not None:
        message.receipt.defer()


class Source(Protocol):
    ready: asyncio.Event  # set while subscribed to every channel
    # True: the source keeps what is not settled (streams), so the intake waits for queue
    # space instead of applying an overflow policy, and shutdown leaves leftovers to it.
    redelivers: bool

    def messages(self) -> AsyncIterator[RawMessage]: ...

    async def stop(self) -> None:
        """Stop reading; messages already yielded are still processed."""

    async def close(self) -> None:
        """After the drain: hand back what this instance held (acknowledgements, leases)."""


class PubSubSource:
    def __init__(
        self,
        redis_url: str,
        channels: Sequence[str],
        metrics: Metrics,
        *,
        health_check_interval: float = 15.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._url = redis_url
        self._channels = tuple(channels)
        self._names = {name.encode(): name for name in self._channels}
        self._metrics = metrics
        self._health = health_check_interval
        self._backoff = backoff or Backoff(base=0.1, cap=5.0)
        self._stopping = False
        self._connection: SubscriberConnection | None = None
        self.ready = asyncio.Event()

    redelivers = False

    async def close(self) -> None:
        return None

    async def stop(self) -> None:
        self._stopping = True
        connection = self._connection
        if connection is None:
            return
        try:
            await connection.send(command("UNSUBSCRIBE"))
        except RedisConnectionError:
            await connection.close()  # Redis is gone: nothing more will arrive anyway

    async def messages(self) -> AsyncIterator[RawMessage]:
        disconnected_at: float | None = None
        while not self._stopping:
            connection = SubscriberConnection(self._url)
            try:
                await connection.connect()
                await connection.send(command("SUBSCRIBE", *self._channels))
                self._connection = connection
                async for message in self._read(connection):
                    if message is not None:
                        yield message
                    elif disconnected_at is not None:
                        log.warning(
                            "redis_resubscribed",
                            down_s=round(time.monotonic() - disconnected_at, 3),
                            channels=len(self._channels),
                            note="messages published while disconnected are lost (pub/sub)",
                        )
                        disconnected_at = None
                        self._backoff.reset()
                return  # every unsubscribe confirmed: a clean stop
            except (RedisConnectionError, ResponseError, OSError) as exc:
                self.ready.clear()
                if self._stopping:
                    return
                if disconnected_at is None:
                    disconnected_at = time.monotonic()
                self._metrics.event("redis_reconnects")
                delay = self._backoff.next_delay()
                log.warning(
                    "redis_disconnected",
                    url=redact_url(self._url),
                    error=redact_text(str(exc)),
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
            finally:
                self._connection = None
                await connection.close()

    async def _read(self, connection: SubscriberConnection) -> AsyncIterator[RawMessage | None]:
        """Messages as they come; None once subscribed to every channel (for the log line)."""
        names, subscribed, pinged = self._names, 0, False
        while True:
            try:
                replies = await connection.replies(self._health)
            except TimeoutError:
                # Quiet for a whole interval: make sure the connection is still alive.
                if pinged:
                    raise RedisConnectionError("Redis did not answer PING") from None
                await connection.send(command("PING"))
                pinged = True
                continue
            pinged = False
            received = time.time()
            for reply in replies:
                kind = reply[0]
                if kind == b"message":
                    yield RawMessage(names[reply[1]], reply[2], received)
                elif kind == b"subscribe":
                    subscribed += 1
                    if subscribed == len(self._channels):
                        self.ready.set()
                        yield None
                elif kind == b"unsubscribe":
                    self.ready.clear()
                    if int(reply[2]) == 0:
                        return
