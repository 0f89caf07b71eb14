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
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

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

CHUNK: Final = 65_536  # options solved at a time: bounds the temporaries (and measured fastest)


class ImpliedVol(NamedTuple):
    iv: FloatArray  # annualised, as a fraction; NaN where status != OK
    status: StatusArray


class Greeks(NamedTuple):
    delta: FloatArray
    gamma: FloatArray
    vega: FloatArray  # per 1 vol point
    theta: FloatArray  # per calendar day


def _arrays(*values: npt.ArrayLike) -> list[FloatArray]:
    return [np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(*values)]


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
    f, k, t, vol, call, rate = _arrays(F, K, T, sigma, is_call, r)
    with np.errstate(all="ignore"):
        x = np.log(f / k)
        ax = np.abs(x)
        s = vol * np.sqrt(np.maximum(t, 0.0))
        intrinsic = np.maximum(np.where(call != 0.0, f - k, k - f), 0.0)
        # The out-of-the-money price, plus intrinsic by parity: no cancelling large terms.
        value = np.sqrt(f) * np.sqrt(k) * otm_price(-ax, s, np.exp(-0.5 * ax), np.sinh(0.5 * ax)).b
        value = intrinsic + np.where(s > 0.0, value, 0.0)
        return np.asarray(np.exp(-rate * t) * value, dtype=np.float64)


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
    f, k, t, vol, call, rate = _arrays(F, K, T, sigma, is_call, r)
    with np.errstate(all="ignore"):
        theta_sign = np.where(call != 0.0, 1.0, -1.0)
        sqrt_t = np.where(t > 0.0, np.sqrt(t), np.nan)
        s = vol * sqrt_t
        d1 = (np.log(f / k) + 0.5 * s * s) / s
        d2 = d1 - s
        df = np.exp(-rate * t)
        spread = s > 0.0
        pdf = np.where(spread, norm_pdf(d1), 0.0)
        n1 = ndtr(theta_sign * d1)
        n2 = ndtr(theta_sign * d2)
        delta = theta_sign * df * n1
        gamma = np.where(spread, df * pdf / (f * s), 0.0)
        vega = f * df * pdf * sqrt_t * 0.01
        decay = f * df * pdf * vol / (2.0 * sqrt_t)
        theta = (-decay + theta_sign * rate * df * (f * n1 - k * n2)) / 365.0
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
    f, k, t, p, call, rate = _arrays(F, K, T, price, is_call, r)
    shape = f.shape
    iv = np.full(f.size, np.nan)
    status = np.empty(f.size, dtype=np.uint8)
    flat = [a.ravel() for a in (f, k, t, p, call, rate)]
    for start in range(0, f.size, CHUNK):
        part = slice(start, start + CHUNK)
        f_, k_, t_, p_, call_, rate_ = (a[part] for a in flat)
        iv[part], status[part] = _implied_vol_chunk(f_, k_, t_, p_, call=call_, rate=rate_)
    return ImpliedVol(iv.reshape(shape), status.reshape(shape))


def _implied_vol_chunk(
    f: FloatArray, k: FloatArray, t: FloatArray, p: FloatArray, *, call: FloatArray, rate: FloatArray
) -> tuple[FloatArray, StatusArray]:
    with np.errstate(all="ignore"):
        forward_value = p * np.exp(rate * t)  # the undiscounted price, as vollib compares it
        x = np.log(f / k)
        is_call = call != 0.0
        intrinsic = np.maximum(np.where(is_call, f - k, k - f), 0.0)
        # Put-call parity: an in-the-money option's time value is its OTM twin's price.
        beta = (forward_value - intrinsic) / (np.sqrt(f) * np.sqrt(k))
        ax = np.abs(x)
        sane = (f > 0.0) & (k > 0.0) & (p > 0.0) & np.isfinite(f + k + p + t + rate + forward_value + x)
        status = np.where(sane, OK, BAD_INPUT).astype(np.uint8)
        status[sane & (t <= 0.0)] = EXPIRED
        pending = status == OK
        status[pending & (beta < 0.0)] = BELOW_INTRINSIC
        status[pending & (forward_value >= np.where(is_call, f, k))] = ABOVE_MAX
        status[(status == OK) & (beta >= np.exp(-0.5 * ax))] = ABOVE_MAX  # the same, after rounding
        iv = np.where(status == OK, 0.0, np.nan)  # 0 where the price is exactly intrinsic
        at = np.flatnonzero((status == OK) & (beta > 0.0))
        if at.size:
            s, converged = implied_s(beta[at], -ax[at])
            sigma = s / np.sqrt(t[at])
            converged &= np.isfinite(sigma)
            iv[at] = np.where(converged, sigma, np.nan)
            status[at[~converged]] = NO_CONVERGENCE
    return iv, status
