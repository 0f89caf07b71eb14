"""Prometheus exposition: a collector that reads the daemon's plain counters at scrape time.

The hot path only bumps integers in `Metrics` and buckets in `Histograms`; nothing here runs
until Prometheus asks. A scrape is served from the HTTP thread (health.py), so the collector
does no I/O and only reads: it copies each dict in one C-level call (atomic under the GIL)
before iterating, because the event loop may add a key meanwhile. Every metric is named
`enricher_*`, and the only labels are channel, collection, outcome and version: all bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from enricher import __version__
from enricher.histograms import (
    Histograms,
)
from enricher.metrics import DROPPED, DUPLICATE, FAILED, INVALID, OVERFLOW, PROCESSED, RECEIVED, Metrics
from enricher.records import CHANNELS
from enricher.store import INDEXES

OUTCOMES: Final = (RECEIVED, PROCESSED, DUPLICATE, INVALID, FAILED, OVERFLOW, DROPPED)
COLLECTIONS: Final = tuple(INDEXES)

# Histograms the pipeline feeds through `Histograms.observe(name, label, value)`.
EVENT_COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "mongo_batches": ("enricher_mongo_batches_total", "insert_many batches acknowledged by MongoDB"),
    "mongo_retries": ("enricher_mongo_retries_total", "MongoDB batches requeued after a transient error"),
    "redis_reconnects": ("enricher_redis_reconnects_total", "Pub/sub connections lost and rebuilt"),
    "dead_lettered": ("enricher_dead_letters_total", "Records handed to the dead-letter writer"),
    "pool_rebuilds": ("enricher_pool_rebuilds_total", "Analytics process pools rebuilt after a worker died"),
    "feed_gaps": ("enricher_feed_gaps_total", "Gaps detected in the feed's tick sequence"),
    "retries": ("enricher_retries_total", "Redis operations retried after a transient error"),
    "store_buffer_overflow": (
        "enricher_store_buffer_overflow_total",
        "Documents dead-lettered because the MongoDB write buffer was full",
    ),
    "store_backpressure_waits": (
        "enricher_store_backpressure_waits_total",
        "Chain and quote batches that waited for the MongoDB writer (ENRICHER_STORE_BACKPRESSURE_BYTES)",
    ),
    "dlq_buffer_overflow": (
        "enricher_dlq_buffer_overflow_total",
        "Dead-letter records lost because Redis was down and the buffer was full",
    ),
    "dlq_trimmed": ("enricher_dlq_trimmed_total", "Oldest dlq:enrichment records trimmed by ENRICHER_DLQ_MAX"),
    "analytics_inline_batches": ("enricher_analytics_inline_batches_total", "Chain batches analysed inline"),
    "analytics_pool_batches": ("enricher_analytics_pool_batches_total", "Chain batches analysed in the pool"),
    "stream_acked": (
        "enricher_stream_acked_total",
        "Stream entries acknowledged (XACK) once durable",
    ),
    "stream_reclaimed": ("enricher_stream_reclaimed_total", "Idle pending stream entries claimed (XAUTOCLAIM)"),
    "stream_deferred": ("enricher_stream_deferred_total", "Stream entries left pending for redelivery"),
    "stream_trimmed": ("enricher_stream_trimmed_total", "Acknowledged stream entries trimmed (XTRIM MINID)"),
    "state_restored": ("enricher_state_restored_total", "Candles, chains and spots loaded from Redis on first sight"),
}
MONGO_DOCS_EVENT: Final = "mongo_docs:"


# What the collector and the readiness probe read. `Enricher` satisfies it; so can a test stub.
class QueueView(Protocol):
    @property
    def capacity(self) -> int: ...

    @property
    def peak_depth(self) -> int: ...

    def depth(self) -> int: ...


class StoreView(Protocol):
    @property
    def buffered(self) -> int: ...

    @property
    def buffered_bytes(self) -> int: ...

    @property
    def indexes_ready(self) -> asyncio.Event: ...


class SourceView(Protocol):
    @property
    def ready(self) -> asyncio.Event: ...


class AppView(Protocol):
    @property
    def metrics(self) -> Metrics: ...

    @property
    def queues(self) -> Mapping[str, QueueView]: ...

    @property
    def store(self) -> StoreView | None: ...

    @property
    def source(self) -> SourceView: ...

    # `dead_letters` (with `.pending`) is read when present: Enricher sets it in start().


class EnricherCollector:
    def __init__(self, app: AppView, histograms: Histograms, ready: Callable[[], bool] | None = None) -> None:
        self._app = app
        self._histograms = histograms
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        app = self._app
        metrics = app.metrics
        yield from _messages(metrics.messages.copy())
        yield from _events(metrics.events.copy())
        yield from _queues(app.queues)
        last = GaugeMetricFamily(
            "enricher_last_message_timestamp_seconds", "Wall clock of the last message received", labels=["channel"]
        )
        for channel, at in sorted(metrics.last_message_at.copy().items()):
            last.add_metric([channel], at)
        yield last
        store = app.store
        yield GaugeMetricFamily(
            "enricher_mongo_pending_documents",
            "Documents waiting to be written to MongoDB",
            value=store.buffered if store is not None else 0,
        )
        yield GaugeMetricFamily(
            "enricher_mongo_pending_bytes",
            "Bytes the documents waiting for MongoDB hold (BSON and raw payloads)",
            value=store.buffered_bytes if store is not None else 0,
        )
        dead_letters = getattr(app, "dead_letters", None)
        yield GaugeMetricFamily(
            "enricher_dlq_buffered",
            "Dead-letter records waiting to be written to Redis",
            value=dead_letters.pending if dead_letters is not None else 0,
        )
        yield GaugeMetricFamily(
            "enricher_subscribed", "1 while subscribed to every input channel", value=app.source.ready.is_set()
        )
        reading = getattr(app.source, "reading", ())
        yield GaugeMetricFamily(
            "enricher_stream_partitions", "Stream partitions this instance reads (streams source)", value=len(reading)
        )
        if self._ready is not None:
            yield GaugeMetricFamily("enricher_ready", "1 while /readyz answers 200", value=self._ready())
        yield GaugeMetricFamily("enricher_start_time_seconds", "Wall clock at start", value=metrics.started_at)
        yield InfoMetricFamily("enricher_build", "The running enricher's version", value={"version": __version__})
        yield from self._histograms.collect()


def _messages(counts: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    family = CounterMetricFamily(
        "enricher_messages_total", "Messages per channel and outcome", labels=["channel", "outcome"]
    )
    keys = {(channel, outcome) for channel in CHANNELS for outcome in OUTCOMES} | set(counts)
    for channel, outcome in sorted(keys):
        family.add_metric([channel, outcome], counts.get((channel, outcome), 0))
    yield family


def _events(events: Mapping[str, int]) -> Iterator[Metric]:
    for event, (name, help_text) in EVENT_COUNTERS.items():
        yield CounterMetricFamily(name, help_text, value=events.get(event, 0))
    docs = CounterMetricFamily("enricher_mongo_documents_total", "Documents written to MongoDB", labels=["collection"])
    written = {key.removeprefix(MONGO_DOCS_EVENT): n for key, n in events.items() if key.startswith(MONGO_DOCS_EVENT)}
    for collection in sorted(set(COLLECTIONS) | set(written)):
        docs.add_metric([collection], written.get(collection, 0))
    yield docs


def _queues(queues: Mapping[str, QueueView]) -> Iterator[Metric]:
    depth = GaugeMetricFamily("enricher_queue_depth", "Messages waiting in a channel's queue", labels=["channel"])
    capacity = GaugeMetricFamily("enricher_queue_capacity", "Capacity of a channel's queue", labels=["channel"])
    high = GaugeMetricFamily(
        "enricher_queue_depth_peak", "Most messages a channel's queue has held at once, since start", labels=["channel"]
    )
    for channel, queue in sorted(dict(queues).items()):
        depth.add_metric([channel], queue.depth())
        capacity.add_metric([channel], queue.capacity)
        high.add_metric([channel], queue.peak_depth)
    yield depth
    yield capacity
    yield high


def build_registry(
    app: AppView, histograms: Histograms, ready: Callable[[], bool] | None = None, *, process: bool = True
) -> CollectorRegistry:
    """A private registry (not the global one): two apps in one process, as in tests, never clash."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EnricherCollector(app, histograms, ready))
    if process:
        ProcessCollector(registry=registry)  # process_* memory, CPU, fds; reads /proc, nothing on the loop
        PlatformCollector(registry=registry)
    return registry
