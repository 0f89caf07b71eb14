"""Black-76 prices, greeks and implied volatilities of whole batches of options, in numpy.

Conventions are those of `vollib.black` and of the feed (`enricher.feed.pricing`): F is the
forward, K the strike, T years of 365 days (ACT/365, see `feed.synthetic.year_fraction`),
r continuously compounded, prices discounted by e^{-rT}; vega per 1 vol point (×0.01),
theta per calendar day (/365). Arguments broadcast against each other; results are float64
arrays of the broadcast shape.

`implied_vol` inverts the price with P. Jäckel's "Let's Be Rational" (Wilmott 2015, 40-53):
prices are normalised to out-of-the-money prices by put-call parity (`lets_be_rational`
explains the solver, `normalised_black` the price it inverts, `normal` the Cody error
functions under both). On the unit tests' grid the IV matches vollib's to 1.2e-12 and
round-trips prices to 1.2e-14 relative (2e-13 for prices down to 1e-250 of the forward).
It never raises on any numbers: each option gets a status, and its IV is NaN exactly where
the status is not OK.

Each option's results are the same bits whatever else is in its batch: the solver takes
shortcuts for the usual batch (every option solvable, one branch of the guess, one
objective, every price in the small-t form, one chunk) and splits the others, and both do
the same arithmetic per option. The model relies on it: a chain gets the same answers
inline and in the pool's batches. On a 21-strike chain's 42 options numpy's per-call
overhead, not the arithmetic, is the cost (~150 µs a solve), so the hot paths spend as few
numpy calls as they can (`lean`). The greeks take Φ from the C library (`normal.ndtr`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from enricher.analytics.lean import BoolArray, constants, every, filled, indices, some
from enricher.analytics.lets_be_rational import implied_s
from enricher.analytics.normal import FloatArray, ndtr, norm_pdf
from enricher.analytics.normalised_black import otm_price

StatusArray = npt.NDArray[np.uint8]

# Status codes of `implied_vol`, one per option.
OK: Final = 0
BELOW_INTRINSIC: Final = 1  # price below the discounted intrinsic value
ABOVE_MAX: Final = 2  # price at or above the discounted forward (call) or strike (put)
EXPIRED: Final = 3  # T <= 0
BAD_INPUT: Final = 4  # F, K, price, T or r not finite, or F, K or price not positive
NO_CONVERGENCE: Final = 5  # the solver gave up (inputs beyond double precision, in practice)

# What the hot paths compute with, as 0-d arrays (see `lean.constants`).
_ZERO, _HALF, _MINUS_HALF, _ONE, _MINUS_ONE, _TWO, _NAN = constants(0.0, 0.5, -0.5, 1.0, -1.0, 2.0, math.nan)
_PER_VOL_POINT, _DAYS_PER_YEAR = constants(0.01, 365.0)
# Options solved at a time: bounds the temporaries. 12,288 float64 are 96 KiB, under glibc's
# default mmap threshold (128 KiB): at 16,384 each temporary sat exactly on it, and whether
# malloc served them from the heap or by mmap/munmap (page faults every time) depended on the
# process's allocation history: 100,000 IVs took 12.7 ms or 22 ms by import order alone.
CHUNK: Final = 12_288


class ImpliedVol(NamedTuple):
    iv: FloatArray  # annualised, as a fraction; NaN where status != OK
    status: StatusArray


class Greeks(NamedTuple):
    delta: FloatArray
    gamma: FloatArray
    vega: FloatArray  # per 1 vol point
    theta: FloatArray  # per calendar day


def _arrays(*values: npt.ArrayLike) -> list[FloatArray]:
    """The arguments as float64 arrays of their broadcast shape.

    `np.broadcast_arrays` costs ~1.5 µs an argument even where nothing needs broadcasting: as
    much as the arithmetic of a whole 21-strike chain. Here the arrays that have the shape
    already are kept as they are, and the usual others, scalars, are filled in.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    shapes = {a.shape for a in arrays if a.ndim}
    shape = shapes.pop() if len(shapes) == 1 else np.broadcast_shapes(*(a.shape for a in arrays))
    return [a if a.shape == shape else filled(shape, a) for a in arrays]


def _by_chunk(compute: Callable[..., Sequence[npt.NDArray[Any]]], arrays: list[FloatArray]) -> list[npt.NDArray[Any]]:
    """`compute`'s results on the arrays' elements, flattened, CHUNK at a time (the usual call
    is one chunk), each result in the arrays' shape. In chunks, the temporaries stay in cache:
    a batch of 100,000 options takes a third less time in 16,384s than whole."""
    shape = arrays[0].shape
    if len(shape) == 1 and shape[0] <= CHUNK:  # the usual call: nothing to flatten or split
        return list(compute(*arrays))
    flat = [a.ravel() for a in arrays]
    size = flat[0].size
    if size <= CHUNK:
        return [result.reshape(shape) for result in compute(*flat)]
    parts = [compute(*(a[at : at + CHUNK] for a in flat)) for at in range(0, size, CHUNK)]
    return [np.concatenate(results).reshape(shape) for results in zip(*parts, strict=True)]


def black76_price(
    F: npt.ArrayLike,
    K: npt.ArrayLike,
    T: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    *,
    r: npt.ArrayLike = 0.0,
) -> FloatArray:
    """Discounted Black-76 price; intrinsic value where sigma or T is 0 (or negative)."""
    [price] = _by_chunk(_price_chunk, _arrays(F, K, T, sigma, is_call, r))
    return price


def _price_chunk(
    f: FloatArray, k: FloatArray, t: FloatArray, vol: FloatArray, call: FloatArray, rate: FloatArray
) -> tuple[FloatArray]:
    with np.errstate(all="ignore"):
        x = np.log(f / k)
        ax = np.abs(x)
        s = vol * np.sqrt(np.maximum(t, 0.0))
        intrinsic = np.maximum(np.where(call != 0.0, f - k, k - f), 0.0)
        # The out-of-the-money price, plus intrinsic by parity: no cancelling large terms.
        value = np.sqrt(f) * np.sqrt(k) * otm_price(-ax, s, np.exp(-0.5 * ax), np.sinh(0.5 * ax)).b
        value = intrinsic + np.where(s > 0.0, value, 0.0)
        return (np.exp(-rate * t) * value,)


def black76_greeks(
    F: npt.ArrayLike,
    K: npt.ArrayLike,
    T: npt.ArrayLike,
    sigma: npt.ArrayLike,
    is_call: npt.ArrayLike,
    *,
    r: npt.ArrayLike = 0.0,
) -> Greeks:
    """Delta, gamma, vega and theta, exactly as `vollib.black.greeks.analytical` defines them.

    NaN where T <= 0 or an input is NaN; at sigma = 0, the limits (gamma = vega = 0).
    """
    return Greeks(*_by_chunk(_greeks_chunk, _arrays(F, K, T, sigma, is_call, r)))


def _greeks_chunk(
    f: FloatArray, k: FloatArray, t: FloatArray, vol: FloatArray, call: FloatArray, rate: FloatArray
) -> Greeks:
    with np.errstate(all="ignore"):
        theta_sign = np.where(call != _ZERO, _ONE, _MINUS_ONE)
        sqrt_t = np.where(t > _ZERO, np.sqrt(t), _NAN)
        s = vol * sqrt_t
        d1 = (np.log(f / k) + _HALF * s * s) / s
        d2 = d1 - s
        df = np.exp(-rate * t)
        spread = s > _ZERO
        pdf = np.where(spread, norm_pdf(d1), _ZERO)
        n1, n2 = ndtr(theta_sign * np.array([d1, d2]))  # one call: its cost is mostly per call
        delta = theta_sign * df * n1
        gamma = np.where(spread, df * pdf / (f * s), _ZERO)
        density = f * df * pdf
        vega = density * sqrt_t * _PER_VOL_POINT
        decay = density * vol / (_TWO * sqrt_t)
        theta = (-decay + theta_sign * rate * df * (f * n1 - k * n2)) / _DAYS_PER_YEAR
        return Greeks(delta, gamma, vega, theta)


def implied_vol(
    F: npt.ArrayLike,
    K: npt.ArrayLike,
    T: npt.ArrayLike,
    price: npt.ArrayLike,
    is_call: npt.ArrayLike,
    *,
    r: npt.ArrayLike = 0.0,
) -> ImpliedVol:
    """Black-76 implied volatility of discounted option prices, with a status per option.

    The IV is 0 for a price exactly at intrinsic value, and NaN wherever the status is not
    OK. An option gets the first status that applies: BAD_INPUT, EXPIRED, BELOW_INTRINSIC
    or ABOVE_MAX, NO_CONVERGENCE.
    """
    return ImpliedVol(*_by_chunk(_implied_vol_chunk, _arrays(F, K, T, price, is_call, r)))


def _implied_vol_chunk(
    f: FloatArray, k: FloatArray, t: FloatArray, p: FloatArray, call: FloatArray, rate: FloatArray
) -> tuple[FloatArray, StatusArray]:
    with np.errstate(all="ignore"):
        forward_value = p * np.exp(rate * t)  # the undiscounted price, as vollib compares it
        x = np.log(f / k)
        is_call = call != _ZERO
        intrinsic = np.maximum(np.where(is_call, f - k, k - f), _ZERO)
        # Put-call parity: an in-the-money option's time value is its OTM twin's price.
        beta = (forward_value - intrinsic) / (np.sqrt(f) * np.sqrt(k))
        ax = np.abs(x)
        sane = (f > _ZERO) & (k > _ZERO) & (p > _ZERO) & np.isfinite(f + k + p + t + rate + forward_value + x)
        expired, below = t <= _ZERO, beta < _ZERO
        # At or above the maximum: as priced, or after rounding (at or above OTM's e^{x/2}).
        above = (forward_value >= np.where(is_call, f, k)) | (beta >= np.exp(_MINUS_HALF * ax))
        status = _status(sane, expired, below, above)
        solvable = status == OK
        at = indices(solvable & (beta > _ZERO))
        if 0 < at.size == beta.size:  # the usual batch: every option to solve, nothing to gather
            iv, converged = _sigma(beta, ax, t)
            if not every(converged):
                status[~converged] = NO_CONVERGENCE
        else:
            iv = np.where(solvable, _ZERO, _NAN)  # 0 where the price is exactly intrinsic
            if at.size:
                iv[at], converged = _sigma(beta[at], ax[at], t[at])
                status[at[~converged]] = NO_CONVERGENCE
    return iv, status


def _status(sane: BoolArray, expired: BoolArray, below: BoolArray, above: BoolArray) -> StatusArray:
    """The first status that applies, in `implied_vol`'s order (a price below intrinsic value
    can't be at the maximum too); OK where none does, as for every option of the usual batch."""
    if not some(~sane | expired | below | above):
        return np.zeros(sane.shape, dtype=np.uint8)
    status = np.where(
        sane,
        np.where(expired, EXPIRED, np.where(below, BELOW_INTRINSIC, np.where(above, ABOVE_MAX, OK))),
        BAD_INPUT,
    )
    return status.astype(np.uint8)


def _sigma(beta: FloatArray, ax: FloatArray, t: FloatArray) -> tuple[FloatArray, BoolArray]:
    """σ from the normalised OTM price and |ln(F/K)| (NaN where it did not converge), and where it did."""
    s, converged = implied_s(beta, -ax)
    sigma = s / np.sqrt(t)
    converged &= np.isfinite(sigma)
    return (sigma if every(converged) else np.where(converged, sigma, _NAN)), converged
