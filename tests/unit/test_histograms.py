from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enricher.histograms import COLLECTIONS, VECTOR_MIN, Histogram
from enricher.store import INDEXES


def test_histogram_collections_are_the_stores() -> None:
    assert set(COLLECTIONS) == set(INDEXES)


def test_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0, -1.0):
        histogram.observe(value)
    assert histogram.buckets() == [("0.1", 3.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert histogram.sum == 0.05 + 0.1 + 0.5 + 2.0


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3 * VECTOR_MIN))
def test_a_batch_counts_as_one_observation_at_a_time(values: list[float]) -> None:
    one_by_one, batch = Histogram((0.001, 0.01, 0.1, 1.0)), Histogram((0.001, 0.01, 0.1, 1.0))
    for value in values:
        one_by_one.observe(value)
    batch.observe_all(values)
    assert batch.buckets() == one_by_one.buckets()
    assert batch.count == one_by_one.count
    assert batch.sum == pytest.approx(one_by_one.sum, rel=1e-12)
