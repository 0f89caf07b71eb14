from __future__ import annotations

from datetime import UTC, datetime, timedelta

from enricher.gaps import GapDetector
from enricher.metrics import Metrics

START = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)


def feed(detector: GapDetector, ids: range | list[int], products: int = 2) -> None:
    for tick_id in ids:
        detector.observe(f"P{tick_id % products}", tick_id, START + timedelta(seconds=tick_id // products))


def test_a_contiguous_feed_has_no_gaps() -> None:
    metrics = Metrics()
    feed(GapDetector(metrics), range(100))
    assert metrics.events["feed_gaps"] == 0


def test_a_hole_in_the_shared_counter_is_one_gap_of_its_size() -> None:
    metrics = Metrics()
    feed(GapDetector(metrics), [*range(40), *range(50, 100)])
    assert metrics.events["feed_gaps"] == 1
    assert metrics.events["feed_gap_ticks"] == 10


def test_reordering_inside_the_counter_is_not_a_gap() -> None:
    metrics = Metrics()
    feed(GapDetector(metrics), [0, 1, 3, 2, 4, 5])
    assert metrics.events["feed_gaps"] == 1  # 3 before 2: one tick looked missing, then arrived
    assert metrics.events["feed_gap_ticks"] == 1


def test_a_feed_restart_resets_the_counter_without_a_gap() -> None:
    metrics = Metrics()
    detector = GapDetector(metrics)
    feed(detector, range(5000))
    feed(detector, range(100))
    assert metrics.events["feed_restarts"] == 1
    assert metrics.events["feed_gaps"] == 0


def test_silence_longer_than_the_limit_is_a_time_gap() -> None:
    metrics = Metrics()
    detector = GapDetector(metrics, check_counter=False, max_silence=10)
    detector.observe("NIFTY", 1, START)
    detector.observe("NIFTY", 2, START + timedelta(seconds=5))
    detector.observe("NIFTY", 3, START + timedelta(seconds=30))
    assert metrics.events["feed_gaps"] == 1
