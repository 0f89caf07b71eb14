"""`/metrics`, `/healthz` and `/readyz` over the standard library's threaded HTTP server.

The server runs in a daemon thread, not on the event loop, so a stalled loop can still be
seen from outside: `/healthz` turns 503 when the loop's heartbeat stops, and `/metrics` still
answers. Handlers only read the daemon's state (see exposition.py for why that is safe).

- `/healthz` (liveness): 200 while the heartbeat task beat in the last `stall_after` seconds.
- `/readyz` (readiness): 200 while subscribed, MongoDB usable (indexes created, the last
  writes not failing) and every queue at or below its high-water mark; else 503 with reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import orjson
import structlog
from prometheus_client.exposition import choose_encoder
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.deadletter import DLQ_KEY
from enricher.exposition import AppView, build_registry
from enricher.histograms import DLQ_LENGTH, LOOP_LAG, Histograms
from enricher.redact import redact_text

log = structlog.get_logger("enricher.health")


class Heartbeat:
    """A task that wakes every `interval` seconds; how late it wakes is the event loop's lag."""

    def __init__(self, interval: float = 0.5, on_beat: Callable[[float], None] | None = None) -> None:
        self.interval = interval
        self.last_beat = time.monotonic()
        self.lag = 0.0
        self._on_beat = on_beat

    def age(self) -> float:
        """Seconds since the last beat: the loop has been stuck at least this long if it is large."""
        return time.monotonic() - self.last_beat

    async def run(self) -> None:
        self.last_beat = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.lag = max(0.0, now - before - self.interval)
            self.last_beat = now
            if self._on_beat is not None:
                try:
                    self._on_beat(self.lag)
                except Exception:  # a bug here must not stop the beat and fail liveness
                    log.exception("heartbeat_hook_failed")


class MongoWatch:
    """Whether MongoDB writes are failing now, told apart from the store's counters alone.

    A batch acknowledged since the last look means writes work; only retries since then mean
    they fail; neither (a quiet feed, or a long backoff) keeps the last verdict.
    """

    def __init__(self) -> None:
        self.failing = False
        self._batches = 0
        self._retries = 0

    def update(self, events: Mapping[str, int]) -> None:
        batches, retries = events.get("mongo_batches", 0), events.get("mongo_retries", 0)
        if batches > self._batches:
            self.failing = False
        elif retries > self._retries:
            self.failing = True
        self._batches, self._retries = batches, retries


def not_ready_reasons(app: AppView, *, high_water: float, mongo_failing: bool = False) -> list[str]:
    """Why the daemon should not get traffic now; an empty list means ready."""
    reasons = []
    if not app.source.ready.is_set():
        reasons.append("not subscribed to the input channels")
    store = app.store
    if store is not None:
        if not store.indexes_ready.is_set():
            reasons.append("MongoDB indexes not created yet (is MongoDB reachable?)")
        elif mongo_failing:
            reasons.append(f"MongoDB writes failing; {store.buffered} documents buffered")
    for channel, queue in sorted(dict(app.queues).items()):
        depth, capacity = queue.depth(), queue.capacity
        if depth > high_water * capacity:
            reasons.append(f"queue {channel} holds {depth} of {capacity}, above its {high_water:.0%} high-water mark")
    return reasons


async def track_dlq_length(redis: Redis, histograms: Histograms, interval: float = 10.0) -> None:
    """Read LLEN dlq:enrichment into `enricher_dlq_length` every `interval` s: scrapes never do I/O.

    While Redis is down the gauge keeps its last value; the reconnect counters tell that story.
    """
    while True:
        try:
            histograms.set_gauge(DLQ_LENGTH, await redis.llen(DLQ_KEY))
        except (RedisError, OSError) as exc:
            log.debug("dlq_length_unavailable", error=redact_text(str(exc))[:200])
        await asyncio.sleep(interval)


class HealthServer:
    """`async with HealthServer(app, port):` serves until the block ends. Port 0 = any free port."""

    def __init__(
        self,
        app: AppView,
        port: int,
        host: str = "0.0.0.0",
        *,
        histograms: Histograms | None = None,
        high_water: float = 0.8,
        stall_after: float = 5.0,
        beat_interval: float = 0.5,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port  # the bound port once started
        self.high_water = high_water
        self.stall_after = stall_after
        self.histograms = histograms if histograms is not None else Histograms()
        self.heartbeat = Heartbeat(beat_interval, self._on_beat)
        self.mongo = MongoWatch()
        self.registry = build_registry(app, self.histograms, self.is_ready)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._beating: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            return
        kind = _Server6 if ":" in self.host else _Server
        server = kind((self.host, self.port), _Handler)  # raises OSError if the port is taken
        server.health = self
        self._server = server
        self.port = int(server.server_address[1])
        self._beating = asyncio.create_task(self.heartbeat.run(), name="heartbeat")
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="enricher-http", daemon=True
        )
        self._thread.start()
        log.info("http_listening", host=self.host, port=self.port, paths=["/metrics", "/healthz", "/readyz"])

    async def stop(self) -> None:
        server, thread, beating = self._server, self._thread, self._beating
        self._server = self._thread = self._beating = None
        if server is not None:
            await asyncio.to_thread(server.shutdown)  # waits for serve_forever to return
            server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        if beating is not None:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    def _on_beat(self, lag: float) -> None:
        self.histograms.set_gauge(LOOP_LAG, lag)
        self.mongo.update(self.app.metrics.events)

    def liveness(self) -> tuple[int, dict[str, Any]]:
        age = self.heartbeat.age()
        body = {"loop_lag_s": round(self.heartbeat.lag, 6), "last_beat_s": round(age, 3)}
        if age < self.stall_after:
            return HTTPStatus.OK, {"status": "ok", **body}
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "stalled", **body}

    def reasons(self) -> list[str]:
        reasons = not_ready_reasons(self.app, high_water=self.high_water, mongo_failing=self.mongo.failing)
        if self._beating is not None and self.heartbeat.age() >= self.stall_after:
            reasons.append(f"event loop stalled for {self.heartbeat.age():.1f} s")
        return reasons

    def is_ready(self) -> bool:
        return not self.reasons()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        reasons = self.reasons()
        if not reasons:
            return HTTPStatus.OK, {"status": "ready"}
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not_ready", "reasons": reasons}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client must not hold up shutdown
    health: HealthServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "enricher"

    def do_GET(self) -> None:
        health = self.server.health
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, encoder(health.registry), content_type)
            elif path == "/healthz":
                self._json(*health.liveness())
            elif path == "/readyz":
                self._json(*health.readiness())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})
        except Exception as exc:  # a bug in a collector must not kill the server thread
            log.exception("http_handler_failed", path=path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, orjson.dumps(body), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would flood the log; errors are logged in do_GET
