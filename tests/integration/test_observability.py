"""/metrics, /healthz and /readyz over real HTTP, on a running app and on a stub app's state."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from enricher import __version__
from enricher.app import Enricher
from enricher.deadletter import DLQ_KEY
from enricher.health import HealthServer, track_dlq_length
from enricher.histograms import (
    DLQ_LENGTH,
    END_TO_END,
    LOOP_LAG,
    MONGO_WRITE,
    POOL_BATCH_SIZE,
    Histogram,
    Histograms,
)
from enricher.metrics import PROCESSED, RECEIVED, Metrics
from enricher.records import OPTION_QUOTE, UNDERLYING
from enricher.source import RawMessage
from tests.conftest import sample, wait_for
from tests.integration.helpers import publish, with_fields

StartApp = Callable[..., Awaitable[Enricher]]
Response = tuple[int, dict[str, str], bytes]


def fetch(url: str, accept: str | None = None) -> Response:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def get(server: HealthServer, path: str, accept: str | None = None) -> Response:
    return await asyncio.to_thread(fetch, f"http://127.0.0.1:{server.port}{path}", accept)


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_metrics_health_and_readiness_of_a_running_app(start_app: StartApp, redis: Redis) -> None:
    app = await start_app()
    async with HealthServer(app, port=0, host="127.0.0.1") as server:
        assert server.port > 0
        await publish(redis, UNDERLYING, sample("synthetic_underlying.json"))
        await wait_for(lambda: app.metrics.messages.get((UNDERLYING, PROCESSED)) == 1, what="tick processed")
        await wait_for(lambda: app.metrics.events.get("mongo_docs:underlying_ticks") == 1, what="tick stored")
        server.histograms.observe(END_TO_END, UNDERLYING, 0.003)
        await wait_for(lambda: server.histograms.gauge(LOOP_LAG) is not None, what="a heartbeat")

        status, headers, body = await get(server, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert 'enricher_messages_total{channel="market:underlying",outcome="processed"} 1.0' in text
        assert f'enricher_build_info{{version="{__version__}"}} 1.0' in text
        values = samples(body)

        def value(name: str, **labels: str) -> float:
            return values[name, frozenset(labels.items())]

        assert value("enricher_messages_total", channel=UNDERLYING, outcome=RECEIVED) == 1
        assert value("enricher_messages_total", channel=OPTION_QUOTE, outcome=PROCESSED) == 0
        assert value("enricher_queue_capacity", channel=UNDERLYING) == app.settings.queue_size
        assert value("enricher_queue_depth", channel=UNDERLYING) == 0
        assert value("enricher_queue_depth_peak", channel=UNDERLYING) == 1  # the one tick, once queued
        assert value("enricher_queue_depth_peak", channel=OPTION_QUOTE) == 0
        assert abs(value("enricher_last_message_timestamp_seconds", channel=UNDERLYING) - time.time()) < 60
        assert value("enricher_mongo_documents_total", collection="underlying_ticks") == 1
        assert value("enricher_mongo_documents_total", collection="option_chains") == 0
        assert value("enricher_mongo_batches_total") >= 1
        assert value("enricher_mongo_pending_documents") == 0
        assert value("enricher_mongo_pending_bytes") == 0
        assert value("enricher_feed_gaps_total") == 0
        assert value("enricher_dead_letters_total") == 0
        assert value("enricher_dlq_buffered") == 0
        assert value("enricher_subscribed") == 1
        assert value("enricher_ready") == 1
        assert value(LOOP_LAG) >= 0
        assert value(f"{END_TO_END}_bucket", channel=UNDERLYING, le="0.0025") == 0
        assert value(f"{END_TO_END}_bucket", channel=UNDERLYING, le="0.005") == 1
        assert value(f"{END_TO_END}_count", channel=UNDERLYING) == 1
        assert value(f"{MONGO_WRITE}_count", collection="option_quotes") == 0  # exposed before any write
        assert ("enricher_dlq_length", frozenset()) not in values  # set by the app, not read at scrape

        status, _, body = await get(server, "/healthz")
        assert status == 200
        health = orjson.loads(body)
        assert health["status"] == "ok"
        assert health["loop_lag_s"] >= 0
        status, _, body = await get(server, "/readyz")
        assert (status, orjson.loads(body)) == (200, {"status": "ready"})
        status, _, _ = await get(server, "/nowhere")
        assert status == 404

        status, headers, body = await get(server, "/metrics", accept="application/openmetrics-text; version=1.0.0")
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
    assert server.port > 0


async def test_readyz_turns_503_when_a_queue_is_over_its_high_water_mark(start_app: StartApp) -> None:
    app = await start_app(queue_size=10)
    async with HealthServer(app, port=0, host="127.0.0.1") as server:
        assert (await get(server, "/readyz"))[0] == 200
        queue = app.queues[UNDERLYING]
        for tick_id in range(9):
            queue.offer(RawMessage(UNDERLYING, with_fields(sample("synthetic_underlying.json"), tick_id=tick_id), 0.0))
        # Fetched from the loop's own thread: the workers can't drain the queue meanwhile.
        status, _, body = fetch(f"http://127.0.0.1:{server.port}/readyz")
        assert status == 503
        assert orjson.loads(body) == {
            "status": "not_ready",
            "reasons": ["queue market:underlying holds 9 of 10, above its 80% high-water mark"],
        }
        await wait_for(lambda: app.metrics.messages.get((UNDERLYING, PROCESSED)) == 9, what="the queue drained")
        assert (await get(server, "/readyz"))[0] == 200


@dataclass
class StubQueue:
    capacity: int = 10
    held: int = 0
    peak_depth: int = 0

    def depth(self) -> int:
        return self.held


@dataclass
class StubStore:
    buffered: int = 0
    buffered_bytes: int = 0
    indexes_ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class StubSource:
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class StubApp:
    metrics: Metrics = field(default_factory=Metrics)
    queues: dict[str, StubQueue] = field(default_factory=lambda: {UNDERLYING: StubQueue()})
    store: StubStore | None = None
    source: StubSource = field(default_factory=StubSource)


async def reasons(server: HealthServer) -> list[str]:
    status, _, body = await get(server, "/readyz")
    answer = orjson.loads(body)
    assert status == (200 if answer["status"] == "ready" else 503)
    reasons: list[str] = answer.get("reasons", [])
    return reasons


async def test_readiness_reasons() -> None:
    app = StubApp(store=StubStore())
    async with HealthServer(app, port=0, host="127.0.0.1", beat_interval=0.02) as server:
        assert await reasons(server) == [
            "not subscribed to the input channels",
            "MongoDB indexes not created yet (is MongoDB reachable?)",
        ]
        app.source.ready.set()
        assert app.store is not None
        app.store.indexes_ready.set()
        assert await reasons(server) == []

        app.queues[UNDERLYING].held = 8  # exactly at 80 %: still ready
        assert await reasons(server) == []
        app.queues[UNDERLYING].held = 9
        assert await reasons(server) == ["queue market:underlying holds 9 of 10, above its 80% high-water mark"]
        app.queues[UNDERLYING].held = 0

        app.store.buffered, app.store.buffered_bytes = 42, 42 * 700
        app.metrics.event("mongo_retries")
        await wait_for(lambda: server.mongo.failing, what="the heartbeat to see the retry")
        assert await reasons(server) == ["MongoDB writes failing; 42 documents buffered"]
        values = samples((await get(server, "/metrics"))[2])
        assert values["enricher_ready", frozenset()] == 0
        assert values["enricher_mongo_pending_documents", frozenset()] == 42
        assert values["enricher_mongo_pending_bytes", frozenset()] == 42 * 700

        app.metrics.event("mongo_batches")
        await wait_for(lambda: not server.mongo.failing, what="the heartbeat to see the write")
        assert await reasons(server) == []


def poll_status(url: str, expected: int, timeout: float) -> int:
    """Blocks the calling thread: called from the event loop, it is the stall under test."""
    deadline = time.monotonic() + timeout
    while True:
        status = fetch(url)[0]
        if status == expected or time.monotonic() > deadline:
            return status


async def test_healthz_reports_a_stalled_event_loop() -> None:
    app = StubApp()
    async with HealthServer(app, port=0, host="127.0.0.1", stall_after=0.3, beat_interval=0.02) as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert (await get(server, "/healthz"))[0] == 200
        assert poll_status(url, 503, timeout=10.0) == 503  # the loop is blocked while this polls
        await wait_for(lambda: server.heartbeat.age() < 0.3, what="a heartbeat once the loop runs again")
        status, _, body = await get(server, "/healthz")
        assert status == 200
        assert orjson.loads(body)["status"] == "ok"
        assert server.heartbeat.lag >= 0.0


async def test_stop_is_idempotent_and_frees_the_port() -> None:
    server = HealthServer(StubApp(), port=0, host="127.0.0.1")
    await server.start()
    port = server.port
    await server.stop()
    await server.stop()
    again = HealthServer(StubApp(), port=port, host="127.0.0.1")
    async with again:
        assert (await get(again, "/healthz"))[0] == 200


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram([0.1, 1.0, 0.5])
    for value in (0.05, 0.1, 0.3, 2.0, -1.0, math.nan):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 3.0), ("0.5", 4.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert histogram.count == 5  # NaN is dropped; a negative one counts as 0
    assert histogram.sum == pytest.approx(2.45)


def test_histograms_know_their_names_and_labels() -> None:
    histograms = Histograms()
    histograms.observe_many(POOL_BATCH_SIZE, "", [1, 3, 3])
    assert histograms.series(POOL_BATCH_SIZE).count == 3
    with pytest.raises(KeyError):
        histograms.observe("enricher_typo_seconds", "", 1.0)
    with pytest.raises(ValueError, match="takes a channel"):
        histograms.observe(END_TO_END, "", 1.0)
    with pytest.raises(ValueError, match="takes no label"):
        histograms.observe(POOL_BATCH_SIZE, "market:underlying", 1.0)
    with pytest.raises(KeyError):
        histograms.set_gauge("enricher_typo", 1.0)


async def test_dlq_length_is_read_in_the_background_not_at_scrape(redis: Redis) -> None:
    await redis.lpush(DLQ_KEY, b"{}", b"{}", b"{}")
    histograms = Histograms()
    tracker = asyncio.create_task(track_dlq_length(redis, histograms, interval=0.01))
    try:
        await wait_for(lambda: histograms.gauge(DLQ_LENGTH) == 3, what="the DLQ length gauge")
        await redis.lpush(DLQ_KEY, b"{}")
        await wait_for(lambda: histograms.gauge(DLQ_LENGTH) == 4, what="the DLQ length to follow")
    finally:
        tracker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tracker
