"""Latency and size histograms, fed on the hot path and read by the Prometheus collector.

Plain lists of counts: `observe` is a bisect and two in-place updates, no lock (one writer,
the event loop). Names are Prometheus metric names; exposition.py turns them into families.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from math import isnan
from typing import Final

import numpy as np
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from enricher.records import CHANNELS

# store.INDEXES names them too; histograms can't import the store (it feeds these), and a
# test checks the two agree.
COLLECTIONS: Final = ("underlying_ticks", "option_quotes", "option_chains", "ohlc_candles", "volatility_surfaces")

END_TO_END: Final = "enricher_end_to_end_latency_seconds"  # label: channel
PROCESSING: Final = "enricher_processing_seconds"  # label: channel
POOL_BATCH: Final = "enricher_pool_batch_seconds"  # no label: pass ""
POOL_BATCH_SIZE: Final = "enricher_pool_batch_size"  # no label: pass ""
MONGO_WRITE: Final = "enricher_mongo_write_seconds"  # label: collection
MONGO_BATCH_SIZE: Final = "enricher_mongo_batch_size"  # label: collection

# Gauges set from outside with `Histograms.set_gauge(name, value)`.
DLQ_LENGTH: Final = "enricher_dlq_length"
LOOP_LAG: Final = "enricher_event_loop_lag_seconds"

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    help: str
    buckets: tuple[float, ...]
    label: str | None = None  # the one label's name; None = unlabelled (observe with label "")
    known: tuple[str, ...] = ()  # label values exposed from the start, so rate() has a zero to start from


HISTOGRAMS: Final[dict[str, HistogramSpec]] = {
    END_TO_END: HistogramSpec(
        "Event timestamp to enriched publish, per message (includes feed clock skew)",
        LATENCY_BUCKETS,
        "channel",
        CHANNELS,
    ),
    PROCESSING: HistogramSpec(
        "Received from Redis to cached, published and handed to the MongoDB writer, per message",
        LATENCY_BUCKETS,
        "channel",
        CHANNELS,
    ),
    POOL_BATCH: HistogramSpec("Time of one analytics call (pool or inline)", LATENCY_BUCKETS),
    POOL_BATCH_SIZE: HistogramSpec("Chains in one analytics call", SIZE_BUCKETS),
    MONGO_WRITE: HistogramSpec("Time of one insert_many", (*LATENCY_BUCKETS, 30.0), "collection", COLLECTIONS),
    MONGO_BATCH_SIZE: HistogramSpec("Documents in one insert_many", SIZE_BUCKETS, "collection", COLLECTIONS),
}

GAUGES: Final[dict[str, str]] = {
    DLQ_LENGTH: "Length of the dlq:enrichment list in Redis, as last read",
    LOOP_LAG: "How late the event loop's last heartbeat woke up, seconds",
}

VECTOR_MIN: Final = 64  # values in a batch from which observe_all goes through numpy

# Metrics.events name -> (counter name, help). A missing event is exposed as 0.


class Histogram:
    """Fixed buckets, a count per bucket and a sum: what one Prometheus histogram series needs.

    One writer (the event loop) and readers in the HTTP thread: `observe` is two in-place
    updates, and a reader copies the bucket list at once, so buckets are always consistent
    with each other (the sum may be one observation ahead or behind).
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(float(bound) for bound in bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is above every bound (+Inf only)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        if value < 0.0:
            value = 0.0  # durations and sizes only: a negative one is feed clock skew
        elif isnan(value):  # NaN would poison the sum for good
            return
        self._counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: bisect_left
        self._sum += value

    def observe_all(self, values: list[float]) -> None:
        """`observe` each value: a big batch in a few numpy calls (a quote batch's 500
        latencies took ~0.3 µs each one by one, ~2% of the burst's event loop)."""
        if len(values) < VECTOR_MIN:
            for value in values:
                self.observe(value)
            return
        array = np.asarray(values, dtype=np.float64)
        array = np.maximum(array[~np.isnan(array)], 0.0)
        counts = self._counts
        slots = np.bincount(np.searchsorted(self.bounds, array, side="left"), minlength=len(counts))
        for slot in slots.nonzero()[0].tolist():
            counts[slot] += int(slots[slot])
        self._sum += float(array.sum())

    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def sum(self) -> float:
        return self._sum

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts as (le, count), ending with +Inf, as HistogramMetricFamily wants."""
        cumulative = list(accumulate(self._counts.copy()))
        les = [repr(bound) for bound in self.bounds] + ["+Inf"]  # 0.005, 1.0: as prometheus_client writes them
        return [(le, float(n)) for le, n in zip(les, cumulative, strict=True)]


class Histograms:
    """The daemon's histograms, keyed by (name, label value), and the few gauges set from outside.

    Names are the module constants above (see `HISTOGRAMS` and `GAUGES`); an unknown name
    raises KeyError, so a typo fails in the first test, not silently in production.
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], Histogram] = {}
        self._gauges: dict[str, float] = {}
        for name, spec in HISTOGRAMS.items():
            for label in spec.known or ("",):
                self._series[name, label] = Histogram(spec.buckets)

    def series(self, name: str, label: str = "") -> Histogram:
        """The one histogram for `name` and `label`, created on first use."""
        histogram = self._series.get((name, label))
        if histogram is None:
            spec = HISTOGRAMS[name]
            if (spec.label is None) != (label == ""):
                raise ValueError(f"{name} takes {'no label' if spec.label is None else 'a ' + spec.label}")
            histogram = self._series[name, label] = Histogram(spec.buckets)
        return histogram

    def observe(self, name: str, label: str, value: float) -> None:
        self.series(name, label).observe(value)

    def observe_many(self, name: str, label: str, values: Iterable[float]) -> None:
        """One lookup for a whole batch, e.g. each message's latency."""
        self.series(name, label).observe_all(list(values))

    def set_gauge(self, name: str, value: float) -> None:
        if name not in GAUGES:
            raise KeyError(name)
        self._gauges[name] = value

    def gauge(self, name: str) -> float | None:
        return self._gauges.get(name)

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[str, Histogram]]] = {}
        for (name, label), histogram in sorted(self._series.copy().items()):
            by_name.setdefault(name, []).append((label, histogram))
        for name, series in by_name.items():
            spec = HISTOGRAMS[name]
            family = HistogramMetricFamily(name, spec.help, labels=[spec.label] if spec.label else [])
            for label, histogram in series:
                family.add_metric([label] if spec.label else [], histogram.buckets(), histogram.sum)
            yield family
        gauges = self._gauges.copy()
        for name, help_text in GAUGES.items():
            if name in gauges:
                yield GaugeMetricFamily(name, help_text, value=gauges[name])
