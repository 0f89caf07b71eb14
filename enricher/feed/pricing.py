"""Black-76 prices, greeks and the volatility smile the synthetic feed quotes from.

The feed is the ground truth for enricher's implied-vol tests, so its prices must be
consistent: every option is the Black-76 price at the smile's vol, and the quoted
`iv` is exactly that vol. Scalar `math` is enough here: the feed runs at a few
hundred options a second, not at enricher's rate.

Conventions (the same as `vollib.black`): `T` in years of 365 days, `r` continuously
compounded, prices discounted by e^{-rT}; vega per 1 vol point (0.01), theta per
calendar day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final, NamedTuple

MIN_VOL: Final = 0.01
SECONDS_PER_YEAR: Final = 365.0 * 86_400.0

_SQRT2: Final = math.sqrt(2.0)
_INV_SQRT_2PI: Final = 1.0 / math.sqrt(2.0 * math.pi)


def norm_cdf(x: float) -> float:
    # erfc, not 1 + erf: it keeps full relative precision in the lower tail, where
    # deep out-of-the-money prices live.
    return 0.5 * math.erfc(-x / _SQRT2)


def norm_pdf(x: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * x * x)


def year_fraction(start: datetime, end: datetime) -> float:
    """ACT/365 years from `start` to `end` (both aware), negative if `end` is earlier."""
    return (end - start).total_seconds() / SECONDS_PER_YEAR


def _d1_d2(F: float, K: float, T: float, sigma: float) -> tuple[float, float]:
    s = sigma * math.sqrt(T)
    d1 = (math.log(F / K) + 0.5 * s * s) / s
    return d1, d1 - s


def black76_price(F: float, K: float, T: float, sigma: float, is_call: bool, *, r: float = 0.0) -> float:
    """Discounted Black-76 price of a European option on a forward `F`."""
    df = math.exp(-r * T)
    if T <= 0.0 or sigma <= 0.0:
        return df * max(F - K if is_call else K - F, 0.0)
    d1, d2 = _d1_d2(F, K, T, sigma)
    # Price the out-of-the-money side and add intrinsic by parity, so an in-the-money
    # price never comes from two large, nearly cancelling terms.
    if K >= F:
        call = F * norm_cdf(d1) - K * norm_cdf(d2)
        undiscounted = call if is_call else call + (K - F)
    else:
        put = K * norm_cdf(-d2) - F * norm_cdf(-d1)
        undiscounted = put + (F - K) if is_call else put
    return df * max(undiscounted, 0.0)


class Greeks(NamedTuple):
    delta: float
    gamma: float
    vega: float  # per 1 vol point
    theta: float  # per calendar day


def black76_greeks(F: float, K: float, T: float, sigma: float, is_call: bool, *, r: float = 0.0) -> Greeks:
    """Delta, gamma, vega and theta of `black76_price`, in `vollib.black.greeks` units."""
    df = math.exp(-r * T)
    if T <= 0.0 or sigma <= 0.0:
        itm = F > K if is_call else F < K
        return Greeks(df * (1.0 if is_call else -1.0) * itm, 0.0, 0.0, 0.0)
    d1, d2 = _d1_d2(F, K, T, sigma)
    sqrt_t = math.sqrt(T)
    pdf = norm_pdf(d1)
    decay = F * df * pdf * sigma / (2.0 * sqrt_t)
    if is_call:
        delta = df * norm_cdf(d1)
        theta = -decay + r * F * df * norm_cdf(d1) - r * K * df * norm_cdf(d2)
    else:
        delta = -df * norm_cdf(-d1)
        theta = -decay - r * F * df * norm_cdf(-d1) + r * K * df * norm_cdf(-d2)
    gamma = df * pdf / (F * sigma * sqrt_t)
    vega = F * df * pdf * sqrt_t * 0.01
    return Greeks(delta, gamma, vega, theta / 365.0)


@dataclass(frozen=True, slots=True)
class Smile:
    """A quadratic smile in standardised moneyness k = ln(K/F) / sqrt(T).

    vol = max(MIN_VOL, atm + skew * k + curvature * k**2), with k clamped to [-wing, wing].
    Dividing by sqrt(T) lets one set of parameters fit every expiry; the clamp stops
    the quadratic from exploding on 200-strike chains a few hours before expiry.
    A wing of 4 * atm is about four standard deviations, where options are worth
    less than a tick.
    """

    atm: float
    skew: float
    curvature: float
    wing: float


def smile_vol(params: Smile, F: float, K: float, T: float) -> float:
    """The smile's vol for strike `K` on forward `F`, `T` years before expiry."""
    k = math.log(K / F) / math.sqrt(T) if T > 0.0 else 0.0
    k = min(max(k, -params.wing), params.wing)
    return max(MIN_VOL, params.atm + params.skew * k + params.curvature * k * k)


# Indices have the steep put skew of index options; single stocks a flatter, more
# symmetric smile.
DEFAULT_SMILES: Final[Mapping[str, Smile]] = MappingProxyType(
    {
        "NIFTY": Smile(atm=0.14, skew=-0.20, curvature=0.30, wing=0.56),
        "BANKNIFTY": Smile(atm=0.18, skew=-0.20, curvature=0.30, wing=0.72),
        "FINNIFTY": Smile(atm=0.16, skew=-0.20, curvature=0.30, wing=0.64),
        "SENSEX": Smile(atm=0.14, skew=-0.20, curvature=0.30, wing=0.56),
        "AAPL": Smile(atm=0.28, skew=-0.10, curvature=0.20, wing=1.12),
        "TSLA": Smile(atm=0.55, skew=-0.05, curvature=0.15, wing=2.20),
        "SPY": Smile(atm=0.16, skew=-0.25, curvature=0.35, wing=0.64),
        "QQQ": Smile(atm=0.20, skew=-0.22, curvature=0.30, wing=0.80),
    }
)


def tick_decimals(tick: float) -> int:
    """Decimal places of a price tick: 0.05 -> 2, 0.5 -> 1, 1 -> 0."""
    return max(0, -math.floor(math.log10(tick) + 1e-9))


def round_to_tick(price: float, tick: float) -> float:
    # Count whole ticks, then round to the tick's decimals: 431 * 0.05 is 21.55, not
    # 21.550000000000001.
    return round(round(price / tick) * tick, tick_decimals(tick))


def bid_ask_last(mid: float, tick: float, spread: float) -> tuple[float, float, float]:
    """(bid, ask, last) on the tick grid, symmetric around last = mid rounded to tick.

    The half-spread is `spread / 2` of the price, at least one tick, and never more
    than `last`: bid is never negative and the quote's mid is always `last`.
    """
    last_ticks = max(round(mid / tick), 0)
    half = min(max(round(mid * spread / 2.0 / tick), 1), last_ticks)
    places = tick_decimals(tick)
    return (
        round((last_ticks - half) * tick, places),
        round((last_ticks + half) * tick, places),
        round(last_ticks * tick, places),
    )
