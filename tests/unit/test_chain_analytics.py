from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enricher.analytics.chain import (
    ChainMetrics,
    analyse_chain,
    analyse_chain_batch,
    atm_strike,
    chain_metrics,
    max_pain_strike,
    pack_chains,
)
from enricher.records import Chain

NAN = math.nan


def make_chain(
    strikes: Sequence[float],
    call_oi: Sequence[float],
    put_oi: Sequence[float],
    *,
    spot: float,
    call_volume: Sequence[float] | None = None,
    put_volume: Sequence[float] | None = None,
    call_last: Sequence[float] | None = None,
    put_last: Sequence[float] | None = None,
) -> Chain:
    n = len(strikes)

    def column(values: Sequence[float] | None, default: float) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        return np.array([default] * n if values is None else values, dtype=np.float64)

    return Chain(
        product="NIFTY",
        expiry="2025-01-30",
        spot_price=spot,
        timestamp=datetime(2025, 1, 25, 10, 15, tzinfo=UTC),
        strikes=column(strikes, 0.0),
        call_oi=column(call_oi, 0.0),
        put_oi=column(put_oi, 0.0),
        call_volume=column(call_volume, 0.0),
        put_volume=column(put_volume, 0.0),
        call_last=column(call_last, NAN),
        put_last=column(put_last, NAN),
        call_iv=column(None, NAN),
        put_iv=column(None, NAN),
        doc={},
    )


def brute_force_max_pain(strikes: Sequence[float], call_oi: Sequence[int], put_oi: Sequence[int]) -> float:
    """CONTRACT §4 word for word, in exact arithmetic: O(n²)."""
    rows = [(Fraction(k), c, p) for k, c, p in zip(strikes, call_oi, put_oi, strict=True)]

    def pain(s: Fraction) -> Fraction:
        return sum((c * max(Fraction(0), s - k) + p * max(Fraction(0), k - s) for k, c, p in rows), Fraction(0))

    return float(min(sorted(Fraction(k) for k in strikes), key=pain))  # min keeps the first, lowest, tie


# The CONTRACT §4 example.
CONTRACT_STRIKES = [21000.0, 21500.0, 22000.0]
CONTRACT_CALL_OI = [50_000.0, 40_000.0, 30_000.0]
CONTRACT_PUT_OI = [20_000.0, 30_000.0, 40_000.0]


def test_max_pain_contract_example() -> None:
    assert max_pain_strike(CONTRACT_STRIKES, CONTRACT_CALL_OI, CONTRACT_PUT_OI) == 21500.0


def test_max_pain_unsorted_strikes() -> None:
    order = [2, 0, 1]
    shuffled = [[column[i] for i in order] for column in (CONTRACT_STRIKES, CONTRACT_CALL_OI, CONTRACT_PUT_OI)]
    assert max_pain_strike(*shuffled) == 21500.0


def test_max_pain_tie_goes_to_lowest_strike() -> None:
    # pain(100) = 1·(200−100) = 100, pain(200) = 1·(200−100) = 100, pain(300) = 200
    assert max_pain_strike([100.0, 200.0, 300.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) == 100.0
    assert max_pain_strike([300.0, 200.0, 100.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]) == 100.0


def test_max_pain_near_tie_within_tolerance_goes_lowest() -> None:
    # Pains 0.3·100 and (0.1 + 0.2)·100 are equal in decimal, not in binary floats.
    assert max_pain_strike([100.0, 200.0], [0.3, 0.0], [0.0, 0.1 + 0.2]) == 100.0


def test_max_pain_zero_oi_is_lowest_strike() -> None:
    assert max_pain_strike([22000.0, 21000.0, 21500.0], [0.0] * 3, [0.0] * 3) == 21000.0


def test_max_pain_single_strike() -> None:
    assert max_pain_strike([21500.0], [10.0], [20.0]) == 21500.0


def test_max_pain_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        max_pain_strike([], [], [])


@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 5), st.integers(0, 5)),
        min_size=1,
        max_size=25,
        unique_by=lambda row: row[0],
    ),
    st.sampled_from([1.0, 50.0, 0.05, 2.5]),
)
def test_max_pain_matches_brute_force(rows: list[tuple[int, int, int]], step: float) -> None:
    # Small OI values make exact ties common; rows come in any order.
    strikes = [grid * step for grid, _, _ in rows]
    call_oi = [c for _, c, _ in rows]
    put_oi = [p for _, _, p in rows]
    assert max_pain_strike(strikes, call_oi, put_oi) == brute_force_max_pain(strikes, call_oi, put_oi)


def test_atm_nearest_and_tie_goes_lower() -> None:
    strikes = [21000.0, 21500.0, 22000.0]
    assert atm_strike(strikes, 21260.0) == 21500.0
    assert atm_strike(strikes, 21250.0) == 21000.0
    assert atm_strike(strikes, 10.0) == 21000.0
    assert atm_strike(strikes, 99_999.0) == 22000.0
    assert atm_strike([22000.0, 21500.0, 21000.0], 21750.0) == 21500.0


def test_atm_decimal_tie_goes_lower() -> None:
    # |22.3 − 22.35| and |22.4 − 22.35| differ in the last bits of a float.
    assert atm_strike([22.4, 22.3], 22.35) == 22.3


def test_chain_metrics_by_hand() -> None:
    metrics = chain_metrics(
        [21000.0, 21500.0, 22000.0],
        call_oi=CONTRACT_CALL_OI,
        put_oi=CONTRACT_PUT_OI,
        call_volume=[100.0, 200.0, 0.0],
        put_volume=[0.0, 50.0, 150.0],
        call_last=[620.0, 250.125, 60.0],
        put_last=[90.0, 240.75, 580.0],
        spot=21510.0,
    )
    assert metrics == ChainMetrics(
        pcr_oi=0.75,  # 90k / 120k
        pcr_volume=0.6667,  # 200 / 300
        atm_strike=21500.0,
        atm_straddle_price=490.88,  # 250.125 + 240.75 = 490.875
        max_pain_strike=21500.0,
        total_call_oi=120_000,
        total_put_oi=90_000,
        call_buildup_otm=30_000,  # strike 22000
        put_buildup_otm=50_000,  # strikes 21000 and 21500
    )
    # Plain Python numbers, so any JSON encoder takes them; OI sums are ints, as before.
    assert [type(value) for value in metrics] == [float] * 5 + [int] * 4


def test_strike_at_spot_is_neither_otm() -> None:
    chain = make_chain([100.0, 110.0, 120.0], [1.0, 2.0, 4.0], [8.0, 16.0, 32.0], spot=110.0)
    metrics = analyse_chain(chain)
    assert (metrics.call_buildup_otm, metrics.put_buildup_otm) == (4, 8)


def test_zero_call_sums_give_zero_ratios() -> None:
    chain = make_chain([100.0, 110.0], [0.0, 0.0], [5.0, 7.0], spot=105.0, put_volume=[3.0, 0.0])
    metrics = analyse_chain(chain)
    assert (metrics.pcr_oi, metrics.pcr_volume) == (0.0, 0.0)
    assert metrics.max_pain_strike == 110.0  # the puts' writers pay least at the top strike


@pytest.mark.parametrize(("call_last", "put_last"), [(NAN, 10.0), (10.0, NAN), (NAN, NAN)])
def test_missing_atm_leg_gives_zero_straddle(call_last: float, put_last: float) -> None:
    chain = make_chain([100.0], [1.0], [1.0], spot=100.0, call_last=[call_last], put_last=[put_last])
    assert analyse_chain(chain).atm_straddle_price == 0.0


def test_single_strike_chain() -> None:
    chain = make_chain([100.0], [3.0], [6.0], spot=90.0, call_last=[1.5], put_last=[12.25])
    assert analyse_chain(chain) == ChainMetrics(2.0, 0.0, 100.0, 13.75, 100.0, 3, 6, 3, 0)


def test_unsorted_chain_metrics_match_sorted() -> None:
    kwargs = {
        "call_oi": [30.0, 50.0, 40.0],
        "put_oi": [40.0, 20.0, 30.0],
        "call_volume": [1.0, 2.0, 3.0],
        "put_volume": [4.0, 5.0, 6.0],
        "call_last": [1.0, 2.0, 3.0],
        "put_last": [4.0, 5.0, 6.0],
    }
    unsorted = chain_metrics([22000.0, 21000.0, 21500.0], spot=21400.0, **kwargs)
    order = [1, 2, 0]
    in_order = chain_metrics(
        [21000.0, 21500.0, 22000.0], spot=21400.0, **{k: [v[i] for i in order] for k, v in kwargs.items()}
    )
    assert unsorted == in_order
    assert unsorted.max_pain_strike == 21500.0


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    grid = draw(st.lists(st.integers(0, 60), min_size=1, max_size=12, unique=True))
    strikes = [50.0 * g for g in sorted(grid)]
    n = len(strikes)
    counts = st.lists(st.integers(0, 1000), min_size=n, max_size=n)
    prices = st.lists(st.one_of(st.just(NAN), st.floats(0, 500, allow_nan=False)), min_size=n, max_size=n)
    # Spots on the 25-point grid land on strikes and on midpoints (ATM ties).
    spot = 25.0 * draw(st.integers(-2, 125))
    return make_chain(
        strikes,
        draw(counts),
        draw(counts),
        spot=spot,
        call_volume=draw(counts),
        put_volume=draw(counts),
        call_last=draw(prices),
        put_last=draw(prices),
    )


@given(st.lists(chains(), max_size=6))
def test_batch_equals_per_chain(batch_of: list[Chain]) -> None:
    assert analyse_chain_batch(pack_chains(batch_of)) == [analyse_chain(chain) for chain in batch_of]


def test_batch_survives_pickling() -> None:
    batch_of = [
        make_chain(CONTRACT_STRIKES, CONTRACT_CALL_OI, CONTRACT_PUT_OI, spot=21510.0, call_last=[1.0, 2.0, 3.0]),
        make_chain([5.0], [1.0], [2.0], spot=4.0, put_last=[0.5]),
    ]
    batch = pack_chains(batch_of)
    received = pickle.loads(pickle.dumps(batch))
    assert received.offsets.tolist() == [0, 3, 4]
    assert np.array_equal(received.call_last, batch.call_last, equal_nan=True)
    assert analyse_chain_batch(received) == [analyse_chain(chain) for chain in batch_of]
    assert analyse_chain_batch(received)[0].max_pain_strike == 21500.0


def test_empty_batch() -> None:
    assert analyse_chain_batch(pack_chains([])) == []


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (make_chain([], [], [], spot=1.0), "non-empty"),
        (make_chain([2.0, 1.0], [0.0, 0.0], [0.0, 0.0], spot=1.0), "chain 1: strikes"),
        (make_chain([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], spot=1.0), "chain 1: strikes"),
        (make_chain([1.0, 2.0], [-1.0, 0.0], [0.0, 0.0], spot=1.0), "open interest"),
        (make_chain([1.0, 2.0], [0.0, 0.0], [NAN, 0.0], spot=1.0), "open interest"),
        (make_chain([1.0, 2.0], [0.0, 0.0], [0.0, 0.0], spot=NAN), "spot"),
    ],
)
def test_batch_rejects_broken_chains(chain: Chain, message: str) -> None:
    good = make_chain([1.0, 2.0], [1.0, 1.0], [1.0, 1.0], spot=1.0)
    with pytest.raises(ValueError, match=message):
        analyse_chain_batch(pack_chains([good, chain]))
