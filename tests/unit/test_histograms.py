from __future__ import annotations

from enricher.histograms import COLLECTIONS, Histogram
from enricher.store import INDEXES


def test_histogram_collections_are_the_stores() -> None:
    assert set(COLLECTIONS) == set(INDEXES)


def test_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0, -1.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 3.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert histogram.sum == 0.05 + 0.1 + 0.5 + 2.0
