"""The Black-76 kernel against vollib (LetsBeRational) on a grid, plus its edge cases and properties.

Grid: ln(F/K) in [-1, 1], T from 1 day to 2 years, vol 5%..200%, calls and puts, r in {0, 5%};
prices from vollib's own `black`. An IV is only as good as the price it inverts: its relative
error is the price's over the price's elasticity to vol, vega·σ/price. Where that elasticity
is below 1e-4 (deep in the money, where the time value is lost in the price's last digits)
or the price is denormal, any IV within rounding is right and both solvers differ; the
accuracy checks below mask those options out (`GRID["well_posed"]`).
"""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vollib.black import black as vollib_price
from vollib.black.greeks import analytical as vollib_greeks
from vollib.black.implied_volatility import implied_volatility as vollib_iv

from enricher.analytics.black76 import (
    ABOVE_MAX,
    BAD_INPUT,
    BELOW_INTRINSIC,
    EXPIRED,
    NO_CONVERGENCE,
    OK,
    black76_greeks,
    black76_price,
    implied_vol,
)
from enricher.analytics.normal import erfc, ndtr

F = 100.0
MONEYNESS = np.linspace(-1.0, 1.0, 21)
EXPIRIES = (1 / 365, 7 / 365, 30 / 365, 0.25, 1.0, 2.0)
VOLS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RATES = (0.0, 0.05)
MIN_ELASTICITY = 1e-4
STATUSES = {OK, BELOW_INTRINSIC, ABOVE_MAX, EXPIRED, BAD_INPUT, NO_CONVERGENCE}


def _grid() -> dict[str, np.ndarray]:
    rows = list(itertools.product(MONEYNESS, EXPIRIES, VOLS, (True, False), RATES))
    x, t, vol, call, r = (np.array(c) for c in zip(*rows, strict=True))
    k = F * np.exp(-x)
    flags = ["c" if c else "p" for c in call]
    price = np.array([vollib_price(f, F, kk, tt, rr, v) for f, kk, tt, rr, v in zip(flags, k, t, r, vol, strict=True)])
    vega = np.array(
        [vollib_greeks.vega(f, F, kk, tt, rr, v) for f, kk, tt, rr, v in zip(flags, k, t, r, vol, strict=True)]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        well_posed = (price > 1e-250) & (100.0 * vega * vol / price > MIN_ELASTICITY)
    return {
        "k": k,
        "t": t,
        "vol": vol,
        "call": call,
        "r": r,
        "flags": np.array(flags),
        "price": price,
        "well_posed": well_posed,
    }


GRID = _grid()


def _vollib_iv(i: int | np.integer) -> float:
    g = GRID
    return float(vollib_iv(g["price"][i], F, g["k"][i], g["r"][i], g["t"][i], g["flags"][i]))


def test_implied_vol_matches_vollib_and_the_true_vol_on_the_grid() -> None:
    g = GRID
    iv, status = implied_vol(F, g["k"], g["t"], g["price"], g["call"], r=g["r"])
    ok = g["well_posed"]
    assert ok.sum() > 0.6 * ok.size  # the rest: deep ITM, or priced below 1e-250
    assert (status[ok] == OK).all()
    reference = np.array([_vollib_iv(i) for i in np.flatnonzero(ok)])
    assert np.max(np.abs(iv[ok] / reference - 1.0)) <= 1e-10
    assert np.max(np.abs(iv[ok] / g["vol"][ok] - 1.0)) <= 1e-10


def test_price_round_trips_through_the_implied_vol() -> None:
    g = GRID
    iv, status = implied_vol(F, g["k"], g["t"], g["price"], g["call"], r=g["r"])
    # Not tiny: a price below 1e-8 of the forward has too few digits to come back exactly.
    kept = (status == OK) & (g["price"] > 1e-8 * F)
    again = black76_price(F, g["k"][kept], g["t"][kept], iv[kept], g["call"][kept], r=g["r"][kept])
    assert np.max(np.abs(again / g["price"][kept] - 1.0)) <= 1e-12


def test_price_matches_vollib() -> None:
    g = GRID
    ours = black76_price(F, g["k"], g["t"], g["vol"], g["call"], r=g["r"])
    kept = g["price"] > 1e-250
    assert np.max(np.abs(ours[kept] / g["price"][kept] - 1.0)) <= 1e-13


def _vollib_greeks(sigma: np.ndarray, at: np.ndarray) -> np.ndarray:
    g = GRID
    out = np.empty((4, at.size))
    for j, i in enumerate(at):
        args = (g["flags"][i], F, g["k"][i], g["t"][i], g["r"][i], sigma[j])
        out[:, j] = [
            vollib_greeks.delta(*args),
            vollib_greeks.gamma(*args),
            vollib_greeks.vega(*args),
            vollib_greeks.theta(*args),
        ]
    return out


def _assert_greeks_close(ours: np.ndarray, reference: np.ndarray) -> None:
    for mine, theirs in zip(ours, reference, strict=True):
        # Relative, with a floor for values that vanish (deep OTM vega, r = 0 call theta...).
        floor = 1e-12 * np.max(np.abs(theirs))
        assert np.all(np.abs(mine - theirs) <= 1e-9 * np.abs(theirs) + floor)


def test_greeks_match_vollib_at_the_same_vol() -> None:
    g = GRID
    at = np.arange(g["k"].size)
    ours = np.array(black76_greeks(F, g["k"], g["t"], g["vol"], g["call"], r=g["r"]))
    _assert_greeks_close(ours, _vollib_greeks(g["vol"], at))


def test_greeks_from_the_implied_vol_match_vollibs_from_its_own() -> None:
    g = GRID
    at = np.flatnonzero(g["well_posed"])
    iv, _ = implied_vol(F, g["k"][at], g["t"][at], g["price"][at], g["call"][at], r=g["r"][at])
    ours = np.array(black76_greeks(F, g["k"][at], g["t"][at], iv, g["call"][at], r=g["r"][at]))
    _assert_greeks_close(ours, _vollib_greeks(np.array([_vollib_iv(i) for i in at]), at))


def test_normal_cdf_matches_math_erfc_from_minus_38_to_8() -> None:
    z = np.linspace(-38.0, 8.0, 20_001)
    ours = ndtr(z)
    # The same argument as ndtr's, so only the two erfc implementations differ.
    reference = np.array([0.5 * math.erfc(v * -0.7071067811865476) for v in z])
    normal = reference >= np.finfo(np.float64).tiny
    assert np.max(np.abs(ours[normal] / reference[normal] - 1.0)) <= 2e-15
    assert np.max(np.abs(ours[~normal] - reference[~normal])) <= 1e-321  # denormals: a few ulps
    y = np.linspace(-6.0, 26.0, 20_001)
    assert np.max(np.abs(erfc(y) / np.array([math.erfc(v) for v in y]) - 1.0)) <= 2e-15


def test_edge_cases() -> None:
    k = np.array([100.0, 80.0, 120.0, 100.0, 100.0, 100.0, 50.0, 50.0, 100.0])
    t = np.array([0.5, 0.5, 0.5, 0.0, -1.0, 1e-9, 0.5, 0.5, 0.5])
    call = np.array([True, True, True, True, True, True, True, True, True])
    price = np.array([0.0, 20.0, 1e-300, 1.0, 1.0, 0.001, 50.0 + 1e-9, 50.0 + 1e-6, 100.0])
    iv, status = implied_vol(F, k, t, price, call)
    assert status.tolist() == [BAD_INPUT, OK, OK, EXPIRED, EXPIRED, OK, OK, OK, ABOVE_MAX]
    assert iv[1] == 0.0  # exactly intrinsic
    assert 0.0 < iv[2] < 0.2  # 20% OTM priced at 1e-300: a small vol, not a failure
    assert iv[5] > 0.0  # ATM, a third of a second from expiry
    assert 0.0 < iv[6] < iv[7] < 1.0  # deep ITM, almost no time value
    assert np.isnan(iv[[0, 3, 4, 8]]).all()
    below = implied_vol(F, 80.0, 0.5, 19.999, True, r=0.0)
    assert below.status == BELOW_INTRINSIC
    assert np.isnan(below.iv)


def test_shapes_scalars_and_pickling() -> None:
    out = implied_vol(100.0, 100.0, 0.5, 5.0, True)
    assert out.iv.shape == ()
    assert out.status.dtype == np.uint8
    out = implied_vol(np.full((2, 3), 100.0), 100.0, 0.5, np.full((2, 3), 5.0), True, r=0.01)
    assert out.iv.shape == (2, 3)
    assert (out.status == OK).all()
    assert pickle.loads(pickle.dumps(implied_vol)) is implied_vol


_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(_any_float, _any_float, _any_float, _any_float, st.booleans(), _any_float),
        min_size=1,
        max_size=40,
    )
)
def test_no_nan_or_inf_in_an_ok_slot_for_any_input(
    rows: list[tuple[float, float, float, float, bool, float]],
) -> None:
    f, k, t, p, call, r = (np.array(c) for c in zip(*rows, strict=True))
    iv, status = implied_vol(f, k, t, p, call, r=r)
    assert set(status.tolist()) <= STATUSES
    ok = status == OK
    assert np.isfinite(iv[ok]).all()
    assert (iv[ok] >= 0.0).all()
    assert np.isnan(iv[~ok]).all()


_positive = st.floats(min_value=1e-3, max_value=1e4)
_expiry = st.floats(min_value=1e-4, max_value=5.0)
_rate = st.floats(min_value=-0.05, max_value=0.2)


@settings(max_examples=100, deadline=None)
@given(st.tuples(_positive, _positive, _expiry, _rate, st.booleans(), st.floats(min_value=1e-6, max_value=0.999)))
def test_status_codes(case: tuple[float, float, float, float, bool, float]) -> None:
    f, k, t, r, call, fraction = case
    df = math.exp(-r * t)
    intrinsic = df * max(f - k if call else k - f, 0.0)
    top = df * (f if call else k)
    if intrinsic > 0.0:
        assert implied_vol(f, k, t, intrinsic * (1.0 - fraction), call, r=r).status == BELOW_INTRINSIC
    assert implied_vol(f, k, t, top * (1.0 + fraction), call, r=r).status == ABOVE_MAX
    # Exactly at the maximum; with r != 0, df·F is itself rounded, either way by an ulp.
    assert implied_vol(f, k, t, f if call else k, call).status == ABOVE_MAX
    assert implied_vol(f, k, -t, top * fraction, call, r=r).status == EXPIRED
    assert implied_vol(f, k, 0.0, top * fraction, call, r=r).status == EXPIRED
    for bad in ((-f, k), (f, 0.0), (math.nan, k), (f, math.inf)):
        assert implied_vol(*bad, t, top * fraction, call, r=r).status == BAD_INPUT
    assert implied_vol(f, k, t, -top * fraction, call, r=r).status == BAD_INPUT
    assert implied_vol(f, k, t, top * fraction, call, r=math.nan).status == BAD_INPUT


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(
        _positive,
        st.floats(min_value=-1.5, max_value=1.5),
        _expiry,
        _rate,
        st.booleans(),
        st.lists(st.floats(min_value=1e-6, max_value=1.0 - 1e-6), min_size=2, max_size=30),
    )
)
def test_implied_vol_rises_with_price(case: tuple[float, float, float, float, bool, list[float]]) -> None:
    f, x, t, r, call, where = case
    k = f * math.exp(-x)
    df = math.exp(-r * t)
    low = df * max(f - k if call else k - f, 0.0)
    high = df * (f if call else k)
    prices = np.sort(low + (high - low) * np.array(where))
    iv, status = implied_vol(f, k, t, prices, call, r=r)
    ok = status == OK
    assert ok.sum() >= ok.size - 2  # the end points may round onto intrinsic or the maximum
    assert np.all(np.diff(iv[ok]) >= -1e-12 * iv[ok][1:])


@pytest.mark.parametrize("sigma", [0.05, 0.3, 2.0])
def test_deep_otm_and_itm_keep_their_digits(sigma: float) -> None:
    # Ten standard deviations out and in: the OTM price is ~1e-23 of the forward.
    t = 0.25
    k = F * np.exp(np.array([10.0, -10.0]) * sigma * math.sqrt(t))
    prices = black76_price(F, k, t, sigma, True)
    iv, status = implied_vol(F, k, t, prices, True)
    assert status[0] == OK
    assert abs(iv[0] / sigma - 1.0) < 1e-13
    assert status[1] == OK  # deep ITM: the time value is below rounding, any IV will do
