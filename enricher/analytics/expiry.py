"""What one expiry's modelled options say as a whole: smile, ATM IV, 25-delta skew, expected
moves, open-interest build-up and gamma exposure (GEX), and the records that carry them.

Pure numpy on one chain's arrays, aligned on ascending strikes, NaN meaning "unknown";
`model.py` solves the IVs and greeks these start from. The records' JSON views
(`ChainModel.to_json`, `OptionColumns.models`) have None where the arrays have NaN or inf.

Conventions, each with its reason:
- The smile is the out-of-the-money side: the put's IV below the forward, the call's at
  and above it. OTM prices are all time value; an ITM price is mostly intrinsic, so a tick
  of rounding moves its IV far more.
- ATM IV is linear in strike between the two smile points that bracket F; outside them,
  the nearest point's, flagged "nearest" in `atm_iv_source`.
- 25-delta points are read on the forward (undiscounted) delta N(d1), the market's
  convention for options on a forward. Every smile point sits on that one axis (a put's
  N(d1) is 1 + its forward delta) and IV is linear along it, never extrapolated: a wing the
  strikes do not reach gives None and names the wing in `skew_status`.
- The straddle's expected move is the undiscounted ATM straddle itself, no 0.85 factor: it
  is exactly the risk-neutral E|F_T - K| at the ATM strike, model-free. The IV move F·σ·√T
  is one standard deviation; for a normal move the straddle is √(2/π) ≈ 0.8 of it.
- GEX per 1 % move of F: ±gamma·OI·lot·F²·0.01, with gamma per strike (it does not depend
  on the side) from the OTM option, else its ITM twin. `gex_sign` +1: dealers are long the
  calls and short the puts the public bought (calls +, puts -); -1 flips both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from enricher.analytics.lean import every, frozen, some
from enricher.records import Chain, FloatArray, Json

CodeArray = npt.NDArray[np.uint8]
Floats = list[float | None]

CALL_25: Final = 0.25  # N(d1) of the 25-delta call
PUT_25: Final = 0.75  # N(d1) of the 25-delta put: forward delta -0.25
_WINGS: Final = frozen(np.array([CALL_25, PUT_25]))

# Names of the codes in the records' code arrays.
STATUSES: Final = (
    "ok",  # the black76 codes first
    "below_intrinsic",
    "above_max",
    "expired",
    "bad_input",
    "no_convergence",
    "no_price",
    "no_forward",
)
PRICES_USED: Final = ("mid", "last", "none")
BUILDUPS: Final[tuple[str | None, ...]] = (None, "long_buildup", "short_buildup", "short_covering", "long_unwinding")


class Side(NamedTuple):
    """One side of one chain, on its strikes: the price used and the model's IV and greeks (NaN = none)."""

    price: FloatArray
    iv: FloatArray
    delta: FloatArray
    gamma: FloatArray


def plain(values: FloatArray) -> Any:
    """`values.tolist()` with None for NaN and inf, in any shape."""
    # Via an object array: twice as fast as patching the list, with many unknowns.
    boxed = values.astype(object)
    boxed[~np.isfinite(values)] = None
    return boxed.tolist()


def finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    """What the next chain of the same (product, expiry) is compared with: keep the last one returned."""

    product: str
    expiry: str
    timestamp: datetime
    strikes: FloatArray
    call_oi: FloatArray
    put_oi: FloatArray
    call_price: FloatArray  # the prices used; NaN where none
    put_price: FloatArray


# Records keep numpy arrays, not lists: a pool sends them back ~10x faster, and the lists
# and dicts are only built by whoever reads them.


@dataclass(frozen=True, slots=True)
class OptionColumns:
    """The per-option `model` fields of one side of a chain, aligned on its strikes."""

    values: FloatArray  # (6, n): iv, delta, gamma, vega (per vol point), theta (per day), price; NaN = None
    codes: CodeArray  # (2, n): indices into PRICES_USED and into STATUSES

    def part(self, rows: slice) -> OptionColumns:
        return OptionColumns(self.values[:, rows], self.codes[:, rows])

    def models(self) -> list[Json]:
        """One `model` dict per option."""
        rows: list[Floats] = plain(self.values)
        used = [PRICES_USED[c] for c in self.codes[0].tolist()]
        statuses = [STATUSES[c] for c in self.codes[1].tolist()]
        return [
            {"iv": i, "delta": d, "gamma": g, "vega": v, "theta": t, "price_used": u, "price": p, "status": s}
            for i, d, g, v, t, p, u, s in zip(*rows, used, statuses, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class ChainModel:
    """The model of one chain: Python scalars, and arrays aligned on its strikes (NaN = None)."""

    forward: float | None
    forward_source: str  # "parity" or "spot"
    time_to_expiry_years: float | None
    atm_iv: float | None
    atm_iv_source: str | None  # "interpolated", "nearest", or None without a smile
    rr25: float | None
    bf25: float | None
    skew_status: str  # "ok", "expired", "put_wing_unreachable", "call_wing_unreachable", "both_wings_unreachable"
    expected_move_straddle: float | None
    expected_move_iv: float | None
    gex_total: float | None
    gex_flip_strike: float | None
    strikes: FloatArray
    smile_iv: FloatArray  # the OTM option's IV
    oi_change_call: FloatArray
    oi_change_put: FloatArray
    call_buildup: CodeArray  # indices into BUILDUPS
    put_buildup: CodeArray
    gex_call: FloatArray
    gex_put: FloatArray
    calls: OptionColumns
    puts: OptionColumns

    def to_json(self) -> Json:
        """The chain-level fields; the smile lists only the strikes that have an IV."""
        known = np.isfinite(self.smile_iv)
        return {
            "forward": self.forward,
            "forward_source": self.forward_source,
            "time_to_expiry_years": self.time_to_expiry_years,
            "atm_iv": self.atm_iv,
            "atm_iv_source": self.atm_iv_source,
            "rr25": self.rr25,
            "bf25": self.bf25,
            "skew_status": self.skew_status,
            "expected_move_straddle": self.expected_move_straddle,
            "expected_move_iv": self.expected_move_iv,
            "gex_total": self.gex_total,
            "gex_flip_strike": self.gex_flip_strike,
            "smile": {"strikes": self.strikes[known].tolist(), "ivs": self.smile_iv[known].tolist()},
            "oi_change": {
                "call": plain(self.oi_change_call),
                "put": plain(self.oi_change_put),
                "call_buildup": [BUILDUPS[c] for c in self.call_buildup.tolist()],
                "put_buildup": [BUILDUPS[c] for c in self.put_buildup.tolist()],
            },
            "gex": {"strikes": self.strikes.tolist(), "call": plain(self.gex_call), "put": plain(self.gex_put)},
        }

    def call_models(self) -> list[Json]:
        """Each call's `model` dict, aligned with the chain's strikes."""
        return self.calls.models()

    def put_models(self) -> list[Json]:
        return self.puts.models()


@dataclass(frozen=True, slots=True)
class ExpiryInputs:
    """One chain's modelled options and what its expiry's statistics need besides."""

    chain: Chain
    calls: Side
    puts: Side
    forward: float
    forward_source: str
    years: float
    r: float
    lot: float
    gex_sign: int


def expiry_model(
    x: ExpiryInputs, previous: ChainSnapshot | None, calls: OptionColumns, puts: OptionColumns
) -> ChainModel:
    """The chain-level model; `previous` is the snapshot to compare OI with (already checked)."""
    strikes, forward, years = x.chain.strikes, x.forward, x.years
    below = strikes < forward
    smile = np.where(below, x.puts.iv, x.calls.iv)
    with np.errstate(all="ignore"):
        discount = math.exp(-x.r * years) if math.isfinite(years) and years > 0.0 else math.nan
        call_delta = np.where(below, 1.0 + x.puts.delta / discount, x.calls.delta / discount)
        atm, atm_source = atm_iv(strikes, smile, forward)
        rr25, bf25, skew_status = (None, None, "expired") if not years > 0.0 else skew_25(smile, call_delta, atm)
        at = nearest_strike(strikes, forward)
        straddle = None if at is None else straddle_move(x.calls.price[at] + x.puts.price[at], years, x.r)
        gamma = np.where(below, x.puts.gamma, x.calls.gamma)
        known = np.isfinite(gamma)
        if not every(known):  # the ITM twin's where the OTM option has none
            gamma = np.where(known, gamma, np.where(below, x.calls.gamma, x.puts.gamma))
        scale = x.gex_sign * x.lot * forward * forward * 0.01
        gex_call, gex_put = scale * gamma * x.chain.call_oi, -scale * gamma * x.chain.put_oi
        net = gex_call + gex_put
        known = np.isfinite(net)
        gex_total = finite_or_none(np.add.reduce(net[known])) if some(known) else None
        d_call, d_put, call_codes, put_codes = oi_change(x, previous)
    return ChainModel(
        forward=finite_or_none(forward),
        forward_source=x.forward_source,
        time_to_expiry_years=finite_or_none(years),
        atm_iv=atm,
        atm_iv_source=atm_source,
        rr25=rr25,
        bf25=bf25,
        skew_status=skew_status,
        expected_move_straddle=straddle,
        expected_move_iv=None if atm is None or not years > 0.0 else finite_or_none(forward * atm * math.sqrt(years)),
        gex_total=gex_total,
        gex_flip_strike=gex_flip_strike(strikes, net),
        strikes=strikes,
        smile_iv=smile,
        oi_change_call=d_call,
        oi_change_put=d_put,
        call_buildup=call_codes,
        put_buildup=put_codes,
        gex_call=gex_call,
        gex_put=gex_put,
        calls=calls,
        puts=puts,
    )


def atm_iv(strikes: FloatArray, smile: FloatArray, forward: float) -> tuple[float | None, str | None]:
    """(IV at the forward, "interpolated" or "nearest"), or (None, None) without a smile."""
    known = np.isfinite(smile)
    if not (some(known) and math.isfinite(forward)):
        return None, None
    at, ivs = strikes[known], smile[known]
    if at[0] <= forward <= at[-1]:
        return float(np.interp(forward, at, ivs)), "interpolated"
    return float(ivs[0] if forward < at[0] else ivs[-1]), "nearest"


def skew_25(smile: FloatArray, call_delta: FloatArray, atm: float | None) -> tuple[float | None, float | None, str]:
    """(25Δ risk reversal, 25Δ butterfly, status) from the smile and each point's N(d1)."""
    known = np.isfinite(smile) & np.isfinite(call_delta)
    deltas, ivs = call_delta[known], smile[known]
    order = np.argsort(deltas, kind="stable")
    deltas, ivs = deltas[order], ivs[order]

    call = put = None
    if deltas.size:
        # Both wings in one interpolation; a wing the deltas don't reach is None.
        call_iv, put_iv = np.interp(_WINGS, deltas, ivs).tolist()
        low, high = deltas[0], deltas[-1]
        call = call_iv if low <= CALL_25 <= high else None
        put = put_iv if low <= PUT_25 <= high else None
    if call is None or put is None:
        which = "both_wings" if call is None and put is None else "call_wing" if call is None else "put_wing"
        return None, None, f"{which}_unreachable"
    return call - put, None if atm is None else (call + put) / 2.0 - atm, "ok"


def nearest_strike(strikes: FloatArray, forward: float) -> int | None:
    """Index of the strike nearest the forward (on a tie, the lower); None without one."""
    if strikes.size == 0 or not math.isfinite(forward):
        return None
    return int(np.argmin(np.abs(strikes - forward)))


def straddle_move(straddle: float, years: float, r: float) -> float | None:
    """The undiscounted straddle price, the expected absolute move; None if a leg is missing.

    Called within `expiry_model`'s np.errstate: an overflow is None here, quietly.
    """
    if not years > 0.0:
        return None
    return finite_or_none(straddle * np.exp(r * years))


def classify_buildup(price_change: FloatArray, oi_change: FloatArray) -> CodeArray:
    """Codes into BUILDUPS from the signs of the changes; 0 (None) if either is 0 or unknown."""
    down, less = price_change < 0.0, oi_change < 0.0
    both_moved = ((price_change > 0.0) | down) & ((oi_change > 0.0) | less)
    # BUILDUPS after None: up/more, down/more, up/less, down/less, so 1 + [down] + 2·[less].
    down_, less_ = down.view(np.uint8), less.view(np.uint8)
    code: CodeArray = (down_ + less_ + less_ + 1) * both_moved.view(np.uint8)
    return code


def oi_change(x: ExpiryInputs, previous: ChainSnapshot | None) -> tuple[FloatArray, FloatArray, CodeArray, CodeArray]:
    """(ΔOI call, ΔOI put, call build-up, put build-up) per strike; NaN and 0 for strikes new since `previous`.

    Called within `expiry_model`'s np.errstate: inf - inf is NaN here, quietly.
    """
    strikes = x.chain.strikes
    n = strikes.size
    if previous is None or previous.strikes.size == 0:
        return np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    before = [previous.call_oi, previous.put_oi, previous.call_price, previous.put_price]
    if not (previous.strikes.shape == strikes.shape and every(previous.strikes == strikes)):
        # Strikes added or dropped since: match them up (the usual chain has the same ones).
        at = np.minimum(np.searchsorted(previous.strikes, strikes), previous.strikes.size - 1)
        found = previous.strikes[at] == strikes
        before = [np.where(found, column[at], np.nan) for column in before]
    call_oi, put_oi, call_price, put_price = before
    d_call = x.chain.call_oi - call_oi
    d_put = x.chain.put_oi - put_oi
    # Both sides in one classification: half the numpy calls on a chain's worth of strikes.
    moves = np.concatenate((x.calls.price - call_price, x.puts.price - put_price))
    codes = classify_buildup(moves, np.concatenate((d_call, d_put)))
    return d_call, d_put, codes[:n], codes[n:]


def gex_flip_strike(strikes: FloatArray, net: FloatArray) -> float | None:
    """The first strike at which GEX summed from the lowest strike up takes the opposite sign
    to the sum below it (unknown GEX adds nothing); None if the sign never changes.

    A loop over Python floats: the same sums, in the same order, as numpy's cumsum (which adds
    sequentially), in half the time on a chain's strikes, and an overflow is inf quietly.
    """
    total = 0.0
    first = 0
    for strike, value in zip(strikes.tolist(), net.tolist(), strict=True):
        if math.isfinite(value):
            total += value
        sign = (total > 0.0) - (total < 0.0)
        if not sign:
            continue
        if not first:
            first = sign
        elif sign != first:
            return float(strike)
    return None
