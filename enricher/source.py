"""Where raw messages come from. A source yields `RawMessage`s; the pipeline doesn't care how.

`PubSubSource` is DeltaStream's transport today: at-most-once Redis pub/sub. It reads on a
connection of its own (a subscribed RESP2 connection can run nothing else), rebuilds the
subscription with backoff when Redis goes away, and on `stop()` unsubscribes and keeps
reading until Redis confirms, so every message published before that is still delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from enricher.backoff import Backoff
from enricher.metrics import Metrics
from enricher.redact import redact_text, redact_url

log = structlog.get_logger("enricher.source")


@dataclass(frozen=True, slots=True)
class RawMessage:
    channel: str
    data: bytes
    received_at: float  # wall clock, for end-to-end latency


class Source(Protocol):
    ready: asyncio.Event  # set while subscribed to every channel

    def messages(self) -> AsyncIterator[RawMessage]: ...

    async def stop(self) -> None: ...


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
        self._pubsub: Any = None
        self.ready = asyncio.Event()

    async def stop(self) -> None:
        self._stopping = True
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.unsubscribe()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await pubsub.aclose()  # Redis is gone: nothing more will arrive anyway

    async def messages(self) -> AsyncIterator[RawMessage]:
        disconnected_at: float | None = None
        while not self._stopping:
            client = Redis.from_url(self._url, health_check_interval=self._health)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                self._pubsub = pubsub
                async for message in self._read(pubsub):
                    if disconnected_at is not None:
                        log.warning(
                            "redis_resubscribed",
                            down_s=round(time.monotonic() - disconnected_at, 3),
                            channels=len(self._channels),
                            note="messages published while disconnected are lost (pub/sub)",
                        )
                        disconnected_at = None
                        self._backoff.reset()
                    if message is not None:
                        yield message
                return  # every unsubscribe confirmed: a clean stop
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
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
                self._pubsub = None
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await client.aclose()

    async def _read(self, pubsub: Any) -> AsyncIterator[RawMessage | None]:
        names = self._names
        subscribed = 0
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            if kind in {b"message", "message"}:
                yield RawMessage(names[message["channel"]], message["data"], time.time())
            elif kind in (b"subscribe", "subscribe"):
                subscribed += 1
                if subscribed == len(self._channels):
                    self.ready.set()
                    yield None  # lets the caller log a resubscription at once
            elif kind in (b"unsubscribe", "unsubscribe"):
                self.ready.clear()
                if int(message["data"]) == 0:
                    return
