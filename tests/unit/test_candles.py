from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enricher.analytics.candles import Candle, CandleBook

T0 = datetime(2025, 1, 25, 10, 0, tzinfo=UTC)


def at(minute: int, second: float = 0.0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


def test_candles_align_to_the_window_on_the_utc_epoch() -> None:
    book = CandleBook()
    outcome = book.add("NIFTY", 100.0, at(15, 30))
    assert [(c.window_minutes, c.start_time, c.end_time) for c in outcome.changed] == [
        (1, at(15), at(16)),
        (5, at(15), at(20)),
        (15, at(15), at(30)),
    ]
    assert outcome.closed == []
    book.add("TSLA", 100.0, at(17, 59.999))
    assert [book.current("TSLA", w).start_time for w in (1, 5, 15)] == [at(17), at(15), at(15)]  # type: ignore[union-attr]


def test_other_offsets_land_in_utc_candles() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    book = CandleBook()
    book.add("NIFTY", 100.0, datetime(2025, 1, 25, 15, 47, 10, tzinfo=ist))  # 10:17:10 UTC
    candle = book.current("NIFTY", 5)
    assert candle is not None
    assert candle.start_time == at(15)
    assert candle.start_time.tzinfo is UTC


def test_naive_tick_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        CandleBook().add("NIFTY", 100.0, datetime(2025, 1, 25, 10, 0))


def test_open_high_low_close() -> None:
    book = CandleBook()
    for second, price in [(1, 100.0), (2, 104.0), (3, 97.5), (4, 101.0)]:
        book.add("NIFTY", price, at(15, second))
    candle = book.current("NIFTY", 1)
    assert candle is not None
    assert (candle.open, candle.high, candle.low, candle.close, candle.num_ticks) == (
        100.0,
        104.0,
        97.5,
        101.0,
        4,
    )


def test_out_of_order_inside_a_candle_keeps_event_time_open_and_close() -> None:
    book = CandleBook()
    book.add("NIFTY", 100.0, at(15, 30))
    book.add("NIFTY", 90.0, at(15, 10))  # earlier: the new open
    book.add("NIFTY", 95.0, at(15, 20))  # in between: neither
    candle = book.current("NIFTY", 1)
    assert candle is not None
    assert (candle.open, candle.high, candle.low, candle.close, candle.num_ticks) == (
        90.0,
        100.0,
        90.0,
        100.0,
        3,
    )


def test_equal_event_times_first_arrival_opens_last_arrival_closes() -> None:
    book = CandleBook()
    for price in (100.0, 101.0, 102.0):
        book.add("NIFTY", price, at(15, 5))
    candle = book.current("NIFTY", 1)
    assert candle is not None
    assert (candle.open, candle.close) == (100.0, 102.0)


def test_tick_of_a_later_window_closes_the_candle() -> None:
    book = CandleBook()
    book.add("NIFTY", 100.0, at(14, 0))
    book.add("NIFTY", 101.0, at(14, 59.5))
    outcome = book.add("NIFTY", 102.0, at(15, 0))
    assert [(c.window_minutes, c.start_time, c.open, c.close, c.num_ticks) for c in outcome.closed] == [
        (1, at(14), 100.0, 101.0, 2),
        (5, at(10), 100.0, 101.0, 2),
        (15, at(0), 100.0, 101.0, 2),
    ]
    assert [(c.start_time, c.open, c.num_ticks) for c in outcome.changed] == [(at(15), 102.0, 1)] * 3
    outcome = book.add("NIFTY", 103.0, at(16, 0))
    assert [c.window_minutes for c in outcome.closed] == [1]
    assert [c.window_minutes for c in outcome.changed] == [1, 5, 15]


def test_too_late_tick_is_counted_and_merged_where_it_still_fits() -> None:
    book = CandleBook()
    book.add("NIFTY", 100.0, at(16, 5))
    outcome = book.add("NIFTY", 99.0, at(15, 50))  # the 1m candle 10:15 is gone; 5m and 15m still open
    assert outcome.too_late == [1]
    assert [c.window_minutes for c in outcome.changed] == [5, 15]
    assert book.too_late_counts == {1: 1, 5: 0, 15: 0}
    one, five = book.current("NIFTY", 1), book.current("NIFTY", 5)
    assert one is not None
    assert five is not None
    assert (one.open, one.num_ticks) == (100.0, 1)
    assert (five.open, five.close, five.num_ticks) == (99.0, 100.0, 2)


def test_products_are_independent() -> None:
    book = CandleBook()
    book.add("NIFTY", 100.0, at(15))
    book.add("AAPL", 200.0, at(16))
    nifty = book.current("NIFTY", 1)
    assert nifty is not None
    assert nifty.start_time == at(15)
    assert book.current("QQQ", 1) is None
    assert len(book.current_candles()) == 6


def test_to_json_is_the_contract_shape() -> None:
    book = CandleBook()
    book.add("NIFTY", 100.0, at(15, 30))
    candle = book.current("NIFTY", 5)
    assert candle is not None
    assert candle.to_json() == {
        "product": "NIFTY",
        "window_minutes": 5,
        "open": 100.0,
        "high": 100.0,
        "low": 100.0,
        "close": 100.0,
        "start_time": "2025-01-25T10:15:00+00:00",
        "end_time": "2025-01-25T10:20:00+00:00",
        "num_ticks": 1,
    }


def test_restore_seeds_the_book_from_json() -> None:
    source = CandleBook()
    source.add("NIFTY", 100.0, at(15, 10))
    source.add("NIFTY", 105.0, at(15, 20))
    restored = Candle.from_json(source.current("NIFTY", 1).to_json())  # type: ignore[union-attr]

    book = CandleBook()
    assert book.restore(restored)
    outcome = book.add("NIFTY", 103.0, at(15, 40))
    candle = book.current("NIFTY", 1)
    assert candle is not None
    assert candle is not restored
    assert (candle.open, candle.high, candle.close, candle.num_ticks) == (100.0, 105.0, 103.0, 3)
    assert [c.window_minutes for c in outcome.changed] == [1, 5, 15]

    assert not book.restore(restored)  # the book's candle is not older
    older = Candle.from_json(restored.to_json() | {"start_time": at(14).isoformat()})
    assert not book.restore(older)
    with pytest.raises(ValueError, match="window"):
        CandleBook((1,)).restore(Candle.from_json(restored.to_json() | {"window_minutes": 5}))


def test_windows_are_configurable() -> None:
    book = CandleBook((1, 60))
    outcome = book.add("NIFTY", 100.0, at(75))
    assert [(c.window_minutes, c.start_time) for c in outcome.changed] == [(1, at(75)), (60, at(60))]
    with pytest.raises(ValueError, match="positive"):
        CandleBook((0, 5))
    with pytest.raises(ValueError, match="distinct"):
        CandleBook((5, 5))


@given(st.lists(st.tuples(st.integers(0, 20 * 60), st.integers(1, 9)), min_size=1, max_size=40))
def test_book_matches_a_reference_model(ticks: list[tuple[int, int]]) -> None:
    """Any arrival order: a window's current candle holds every tick of its latest period,
    and a tick counts as too late when a later period had already begun when it arrived."""
    book = CandleBook()
    for second, price in ticks:
        book.add("NIFTY", float(price), at(0, second))
    for window in (1, 5, 15):
        width = 60 * window
        period = [(second, i, price) for i, (second, price) in enumerate(ticks)]
        latest = max(second // width for second, _, _ in period)
        members = [row for row in period if row[0] // width == latest]
        candle = book.current("NIFTY", window)
        assert candle is not None
        assert candle.start_time == at(0, latest * width)
        assert candle.open == min(members)[2]  # earliest time, first arrival
        assert candle.close == max(members, key=lambda row: (row[0], row[1]))[2]  # latest time, last arrival
        assert (candle.high, candle.low) == (max(m[2] for m in members), min(m[2] for m in members))
        assert candle.num_ticks == len(members)
        running, late = -1, 0
        for second, _ in ticks:
            late += second // width < running
            running = max(running, second // width)
        assert book.too_late_counts[window] == late
