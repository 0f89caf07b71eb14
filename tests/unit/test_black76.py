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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vollib.black import black as vollib_price
from vollib.black.greeks import analytical as vollib_greeks
from vollib.black.implied_volatility import implied_volatility as vollib_iv

from enricher.analytics import black76, lets_be_rational
from enricher.analytics.black76 import (
    ABOVE_MAX,
    BAD_INPUT,
    BELOW_INTRINSIC,
    EXPIRED,
    NO_CONVERGENCE,
    OK,
    Greeks,
    black76_greeks,
    black76_price,
    implied_vol,
)
from enricher.analytics.lean import constants, every, filled, indices, pick, some
from enricher.analytics.normal import erfc, erfcx_moderate, erfcx_nonnegative, ndtr
from enricher.analytics.normalised_black import _small_t_expansion

F = 100.0
MONEYNESS = np.linspace(-1.0, 1.0, 21)
EXPIRIES = (1 / 365, 7 / 365, 30 / 365, 0.25, 1.0, 2.0)
VOLS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
RATES = (0.0, 0.05)
MIN_ELASTICITY = 1e-4
SQRT1_2 = 0.70710678118654752440084436210484903928483593768847
STATUSES = {OK, BELOW_INTRINSIC, ABOVE_MAX, EXPIRED, BAD_INPUT, NO_CONVERGENCE}

# Big generated inputs: on a loaded machine hypothesis would call their generation too slow.
SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]


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
    assert _same(ours, np.array([0.5 * math.erfc(v * -SQRT1_2) for v in z]))  # ndtr is the C library's
    # Cody's erfc, the solver's, on the same argument: only the two erfc implementations differ.
    reference = 0.5 * erfc(z * -SQRT1_2)
    normal = reference >= np.finfo(np.float64).tiny
    assert np.max(np.abs(ours[normal] / reference[normal] - 1.0)) <= 2e-15
    assert np.max(np.abs(ours[~normal] - reference[~normal])) <= 1e-321  # denormals: a few ulps
    y = np.linspace(-6.0, 26.0, 20_001)
    assert np.max(np.abs(erfc(y) / np.array([math.erfc(v) for v in y]) - 1.0)) <= 2e-15


def test_erfcx_moderate_agrees_with_codys_erfcx_from_0_to_26() -> None:
    rng = np.random.default_rng(11)
    y = np.concatenate(
        [np.linspace(0.0, 26.0, 20_001), rng.uniform(0.0, 8.0, 5_000), np.exp(rng.uniform(-40, 0, 1_000))]
    )
    ours, cody = erfcx_moderate(y), erfcx_nonnegative(y)
    # Each is within 5 ulps of the exact value (40-digit reference, checked once): 10 apart at most.
    assert np.max(np.abs(ours - cody) / np.spacing(cody)) <= 10.0
    assert erfcx_moderate(np.array(0.0)) == 1.0
    assert erfcx_moderate(np.array([[0.5, 1.0]])).shape == (1, 2)
    assert np.isnan(erfcx_moderate(np.array([np.nan]))).all()


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


def _any_options(min_size: int) -> st.SearchStrategy[list[tuple[float, float, float, float, bool, float]]]:
    """Batches of (F, K, T, price, is_call, r) made of any floats at all."""
    option = st.tuples(_any_float, _any_float, _any_float, _any_float, st.booleans(), _any_float)
    return st.lists(option, min_size=min_size, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_DATA)
@given(_any_options(min_size=1))
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


def test_a_forward_on_a_strike_is_solved_in_closed_form_to_vollibs_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    # ~5% of the feed's chains imply a forward exactly on a strike: x = 0, off the tables.
    # Those options start from the x = 0 price inverted, not from Jäckel's exact guess.
    def exact_guess(*_: object) -> None:
        raise AssertionError("Jäckel's exact guess was used")

    monkeypatch.setattr(lets_be_rational, "jaeckel_guess", exact_guess)
    moneyness, expiries, vols = (0.0, 3e-13, -8e-13), (1 / 365, 0.25, 2.0), (1e-6, 0.01, 0.2, 1.0, 4.0)
    rows = list(itertools.product(moneyness, expiries, vols, (True, False)))
    x, t, vol, call = (np.array(c) for c in zip(*rows, strict=True))
    k = F * np.exp(-x)
    flags = ["c" if c else "p" for c in call]
    price = np.array([vollib_price(f, F, kk, tt, 0.0, v) for f, kk, tt, v in zip(flags, k, t, vol, strict=True)])
    iv, status = implied_vol(F, k, t, price, call)
    assert (status == OK).all()
    reference = np.array([vollib_iv(p, F, kk, 0.0, tt, f) for p, kk, tt, f in zip(price, k, t, flags, strict=True)])
    assert np.max(np.abs(iv / reference - 1.0)) <= 1e-12
    assert np.max(np.abs(iv / vol - 1.0)) <= 1e-12


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


# The solver's shortcuts for the usual batch (one Householder objective, one branch of the
# guess, every option solvable, every b in the small-t form, one chunk) and its splits for
# the others must give each option the same bits, whatever else is in its batch: the model
# relies on it, so that a chain gets the same answers inline and in a pooled batch.


def _mixed_batch(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Options in every region of the solver, with junk, prices on both sides of the bounds."""
    rng = np.random.default_rng(seed)
    t = np.exp(rng.uniform(math.log(1 / (365 * 24 * 4)), math.log(5.0), n))
    vol = np.exp(rng.uniform(math.log(0.01), math.log(4.0), n))
    x = rng.uniform(-3.0, 3.0, n) * rng.choice([1.0, 0.01, 1e-6, 1e-13, 0.0], n)
    k = F * np.exp(-x)
    call = rng.random(n) < 0.5
    r = np.where(rng.random(n) < 0.5, 0.0, 0.05)
    price = black76_price(F, k, t, vol, call, r=r) * rng.choice([1.0, 1.0, 1.0, 1 + 1e-9, 1 - 1e-9, 0.5, 2.0], n)
    junk = rng.random(n) < 0.05
    price = np.where(junk, rng.choice([np.nan, -1.0, 0.0, np.inf, 1e300], n), price)
    t = np.where(rng.random(n) < 0.02, rng.choice([0.0, -1.0, np.nan], n), t)
    return k, t, price, call, r


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_a_batch_solves_each_option_as_it_would_alone() -> None:
    k, t, price, call, r = _mixed_batch(1500, seed=3)
    iv, status = implied_vol(F, k, t, price, call, r=r)
    assert {OK, BELOW_INTRINSIC, ABOVE_MAX, EXPIRED, BAD_INPUT} <= set(status.tolist())
    for i in range(k.size):
        alone = implied_vol(F, k[i : i + 1], t[i : i + 1], price[i : i + 1], call[i : i + 1], r=r[i : i + 1])
        assert _same(alone.iv, iv[i : i + 1]), i
        assert _same(alone.status, status[i : i + 1]), i
    for size in (7, 42, 500):  # and as part of any other batch
        parts = [
            implied_vol(F, k[j : j + size], t[j : j + size], price[j : j + size], call[j : j + size], r=r[j : j + size])
            for j in range(0, k.size, size)
        ]
        assert _same(np.concatenate([p.iv for p in parts]), iv)
        assert _same(np.concatenate([p.status for p in parts]), status)


def test_chunks_give_the_same_bits_as_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    k, t, price, call, r = (a.reshape(25, 40) for a in _mixed_batch(1000, seed=4))
    iv = implied_vol(F, k, t, price, call, r=r)
    value = black76_price(F, k, t, iv.iv, call, r=r)
    greeks = black76_greeks(F, k, t, iv.iv, call, r=r)
    monkeypatch.setattr(black76, "CHUNK", 7)
    again = implied_vol(F, k, t, price, call, r=r)
    assert _same(again.iv, iv.iv)
    assert _same(again.status, iv.status)
    assert _same(black76_price(F, k, t, iv.iv, call, r=r), value)
    assert all(_same(a, b) for a, b in zip(black76_greeks(F, k, t, iv.iv, call, r=r), greeks, strict=True))
    assert iv.iv.shape == value.shape == greeks.delta.shape == (25, 40)


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_DATA)
@given(_any_options(min_size=2))
def test_any_batch_solves_each_option_as_it_would_alone(
    rows: list[tuple[float, float, float, float, bool, float]],
) -> None:
    f, k, t, p, call, r = (np.array(c) for c in zip(*rows, strict=True))
    iv, status = implied_vol(f, k, t, p, call, r=r)
    for i, row in enumerate(rows):
        alone = implied_vol(*(np.array([v]) for v in row[:5]), r=np.array([row[5]]))
        assert _same(alone.iv, iv[i : i + 1])
        assert _same(alone.status, status[i : i + 1])


def test_empty_batches() -> None:
    empty = np.array([])
    iv, status = implied_vol(F, empty, 0.5, empty, True)
    assert iv.shape == status.shape == (0,)
    assert black76_price(F, empty, 0.5, empty, True).shape == (0,)
    assert all(g.shape == (0,) for g in black76_greeks(F, empty, 0.5, empty, True))


def _jaeckel_small_t_expansion(h: np.ndarray, t: np.ndarray) -> np.ndarray:
    """LetsBeRational's small_t_expansion_of_normalized_black, nested by hand as Jäckel writes it."""
    a = 1.0 + h * 1.25331413731550025120788264240552262650349337030497 * erfcx_moderate(h * -SQRT1_2)
    w, h2 = t * t, h * h
    ah2 = a * h2
    c6 = (
        -89055.0
        + 135135.0 * a
        + h2
        * (
            -82845.0
            + 270270.0 * a
            + h2
            * (
                -20370.0
                + 135135.0 * a
                + h2 * (-1926.0 + 25740.0 * a + h2 * (-75.0 + 2145.0 * a + h2 * (-1.0 + 78.0 * a + ah2)))
            )
        )
    ) / 6227020800.0
    c5 = (
        -6555.0
        + 10395.0 * a
        + h2
        * (-4680.0 + 17325.0 * a + h2 * (-840.0 + 6930.0 * a + h2 * (-52.0 + 990.0 * a + h2 * (-1.0 + 55.0 * a + ah2))))
    ) / 39916800.0
    c4 = (
        -561.0 + 945.0 * a + h2 * (-285.0 + 1260.0 * a + h2 * (-33.0 + 378.0 * a + h2 * (-1.0 + 36.0 * a + ah2)))
    ) / 362880.0
    c3 = (-57.0 + 105.0 * a + h2 * (-18.0 + 105.0 * a + h2 * (-1.0 + 21.0 * a + ah2))) / 5040.0
    c2 = (-7.0 + 15.0 * a + h2 * (-1.0 + 10.0 * a + ah2)) / 120.0
    c1 = (-1.0 + 3.0 * a + ah2) / 6.0
    expansion: np.ndarray = 2.0 * t * (a + w * (c1 + w * (c2 + w * (c3 + w * (c4 + w * (c5 + w * c6))))))
    return expansion


def test_small_t_expansion_is_jaeckels_to_the_bit() -> None:
    rng = np.random.default_rng(5)
    h = -rng.uniform(0.0, 10.0, 5000) * rng.choice([1.0, 1e-3, 1e-9], 5000)
    t = rng.uniform(0.0, 0.21, 5000) * rng.choice([1.0, 1e-3, 1e-9], 5000)
    assert _same(_small_t_expansion(h, t), _jaeckel_small_t_expansion(h, t))


def test_lean_spellings_match_numpys() -> None:
    rng = np.random.default_rng(6)
    for mask in (rng.random(50) < 0.5, np.ones(50, dtype=bool), np.zeros(50, dtype=bool), np.ones(0, dtype=bool)):
        assert every(mask) == bool(mask.all())
        assert some(mask) == bool(mask.any())
        assert _same(indices(mask), np.flatnonzero(mask))
    assert _same(filled((2, 3), np.array(1.5)), np.full((2, 3), 1.5))
    [half] = constants(0.5)
    assert half.shape == ()
    assert not half.flags.writeable
    kinds = rng.integers(0, 3, 50)
    columns = [(kind, Greeks(*(np.full(50, 10.0 * kind + j) for j in range(4)))) for kind in range(3)]
    picked = pick(kinds, columns)
    assert isinstance(picked, Greeks)
    assert _same(picked.vega, 10.0 * kinds + 2.0)
