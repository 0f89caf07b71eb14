"""Chain analytics (CONTRACT §4): PCR, ATM strike and straddle, max pain, OI build-up.

Pure numpy and module-level, so the same code runs inline or in the process pool. A pool
call costs more in pickling than the maths, so many chains travel as one `ChainBatch` of
concatenated arrays and are analysed in one vectorised pass (`analyse_chain_batch`).

Open interest and volume are integer counts (CONTRACT §1). Their float64 sums are exact
below 2**53, so the tie rules below decide exactly; the tolerance only matters for
non-integer input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from enricher.records import Chain, FloatArray

IntArray = npt.NDArray[np.int64]

# Near-ties within this relative tolerance count as ties and go to the lowest strike:
# - ATM: distances to spot within TIE_RTOL × |spot|;
# - max pain: an OI imbalance within TIE_RTOL × the chain's total OI counts as balanced,
#   which means pains within TIE_RTOL × total OI × strike range (a bound on every pain).
TIE_RTOL: Final = 1e-12


class ChainMetrics(NamedTuple):
    """The fields §4 adds to an enriched chain; `_asdict()` gives them under their contract names.

    The OI sums are ints because OI is an integer count and the old service wrote ints.
    """

    pcr_oi: float
    pcr_volume: float
    atm_strike: float
    atm_straddle_price: float
    max_pain_strike: float
    total_call_oi: int
    total_put_oi: int
    call_buildup_otm: int
    put_buildup_otm: int


@dataclass(frozen=True, slots=True)
class ChainBatch:
    """Many chains as concatenated columns: chain i is rows `offsets[i]:offsets[i + 1]`.

    Each chain's rows are non-empty ascending unique strikes (`analyse_chain_batch` checks).
    """

    strikes: FloatArray
    call_oi: FloatArray
    put_oi: FloatArray
    call_volume: FloatArray
    put_volume: FloatArray
    call_last: FloatArray
    put_last: FloatArray
    offsets: IntArray  # len = number of chains + 1
    spots: FloatArray

    def __reduce__(self) -> tuple[Callable[[bytes, bytes, bytes], ChainBatch], tuple[bytes, bytes, bytes]]:
        # Pickling an ndarray costs ~2 µs each way, raw bytes ~0.1 µs: with nine arrays that
        # is most of the cost of sending a small batch to the pool.
        columns = (
            self.strikes,
            self.call_oi,
            self.put_oi,
            self.call_volume,
            self.put_volume,
            self.call_last,
            self.put_last,
        )
        floats = b"".join([column.tobytes() for column in columns])
        return _unpickle_batch, (floats, self.offsets.tobytes(), self.spots.tobytes())


def _unpickle_batch(floats: bytes, offsets: bytes, spots: bytes) -> ChainBatch:
    # Read-only views of the received bytes, in `__reduce__`'s column order; no copies.
    strikes, call_oi, put_oi, call_volume, put_volume, call_last, put_last = np.frombuffer(
        floats, dtype=np.float64
    ).reshape(7, -1)
    return ChainBatch(
        strikes=strikes,
        call_oi=call_oi,
        put_oi=put_oi,
        call_volume=call_volume,
        put_volume=put_volume,
        call_last=call_last,
        put_last=put_last,
        offsets=np.frombuffer(offsets, dtype=np.int64),
        spots=np.frombuffer(spots, dtype=np.float64),
    )


def max_pain_strike(strikes: npt.ArrayLike, call_oi: npt.ArrayLike, put_oi: npt.ArrayLike) -> float:
    """The strike minimising the option writers' payout; on a tie, the lowest.

    O(n) on ascending strikes (the `Chain` record's order), O(n log n) otherwise.
    """
    strike_arr, call_arr, put_arr = (np.asarray(a, dtype=np.float64) for a in (strikes, call_oi, put_oi))
    if strike_arr.size == 0:
        raise ValueError("max pain of an empty chain")
    if not _is_ascending(strike_arr):
        order = np.argsort(strike_arr, kind="stable")
        strike_arr, call_arr, put_arr = strike_arr[order], call_arr[order], put_arr[order]
    return float(strike_arr[_lowest_pain_index(call_arr, put_arr)])


def atm_strike(strikes: npt.ArrayLike, spot: float) -> float:
    """The strike nearest to spot; on a tie, the lower. Any order of strikes."""
    strike_arr = np.asarray(strikes, dtype=np.float64)
    return float(strike_arr[_atm_index(strike_arr, spot)])


def chain_metrics(
    strikes: npt.ArrayLike,
    *,
    call_oi: npt.ArrayLike,
    put_oi: npt.ArrayLike,
    call_volume: npt.ArrayLike,
    put_volume: npt.ArrayLike,
    call_last: npt.ArrayLike,
    put_last: npt.ArrayLike,
    spot: float,
) -> ChainMetrics:
    """All §4 metrics of one chain, given as aligned arrays in any strike order; NaN last = missing.

    Keyword-only, because seven same-shaped arrays in a row are easy to swap unnoticed.
    """
    strike_arr, c_oi, p_oi, c_vol, p_vol, c_last, p_last = (
        np.asarray(a, dtype=np.float64)
        for a in (strikes, call_oi, put_oi, call_volume, put_volume, call_last, put_last)
    )
    if strike_arr.size == 0:
        raise ValueError("metrics of an empty chain")
    atm = _atm_index(strike_arr, spot)
    return _metrics(
        calls_oi=float(c_oi.sum()),
        puts_oi=float(p_oi.sum()),
        calls_volume=float(c_vol.sum()),
        puts_volume=float(p_vol.sum()),
        atm_strike=float(strike_arr[atm]),
        straddle=float(c_last[atm]) + float(p_last[atm]),
        max_pain=max_pain_strike(strike_arr, c_oi, p_oi),
        calls_otm=float(c_oi[strike_arr > spot].sum()),
        puts_otm=float(p_oi[strike_arr < spot].sum()),
    )


def analyse_chain(chain: Chain) -> ChainMetrics:
    """`chain_metrics` of a parsed chain record."""
    return chain_metrics(
        chain.strikes,
        call_oi=chain.call_oi,
        put_oi=chain.put_oi,
        call_volume=chain.call_volume,
        put_volume=chain.put_volume,
        call_last=chain.call_last,
        put_last=chain.put_last,
        spot=chain.spot_price,
    )


def pack_chains(chains: Sequence[Chain]) -> ChainBatch:
    """Concatenate chains into one batch for the pool.

    This runs in the event loop, so it only copies: `analyse_chain_batch` checks the data.
    """
    offsets = np.fromiter(
        accumulate((len(chain.strikes) for chain in chains), initial=0), dtype=np.int64, count=len(chains) + 1
    )
    return ChainBatch(
        strikes=_concat([chain.strikes for chain in chains]),
        call_oi=_concat([chain.call_oi for chain in chains]),
        put_oi=_concat([chain.put_oi for chain in chains]),
        call_volume=_concat([chain.call_volume for chain in chains]),
        put_volume=_concat([chain.put_volume for chain in chains]),
        call_last=_concat([chain.call_last for chain in chains]),
        put_last=_concat([chain.put_last for chain in chains]),
        offsets=offsets,
        spots=np.array([chain.spot_price for chain in chains], dtype=np.float64),
    )


def analyse_chain_batch(batch: ChainBatch) -> list[ChainMetrics]:
    """Metrics of every chain in the batch, in order: the function the process pool runs.

    Equal to `analyse_chain` per chain, but in one pass of segment reductions, because
    numpy's per-call overhead, not arithmetic, is what a 21-strike chain costs.
    Raises ValueError if a chain breaks the `Chain` record's invariants.
    """
    _check_batch(batch)
    starts, ends = batch.offsets[:-1], batch.offsets[1:]
    if starts.size == 0:
        return []
    chain_of_row = np.repeat(np.arange(starts.size), ends - starts)
    spot_of_row = batch.spots[chain_of_row]
    call_otm = np.where(batch.strikes > spot_of_row, batch.call_oi, 0.0)
    put_otm = np.where(batch.strikes < spot_of_row, batch.put_oi, 0.0)
    calls_oi, puts_oi, calls_volume, puts_volume, calls_otm, puts_otm = (
        np.add.reduceat(column, starts)
        for column in (batch.call_oi, batch.put_oi, batch.call_volume, batch.put_volume, call_otm, put_otm)
    )

    # ATM: rows within the tie tolerance of their chain's nearest distance; rows are
    # ascending within a chain, so its first such row is the lowest tied strike.
    distance = np.abs(batch.strikes - spot_of_row)
    nearest = np.minimum.reduceat(distance, starts) + TIE_RTOL * np.abs(batch.spots)
    tied_rows = np.flatnonzero(distance <= nearest[chain_of_row])
    atm_rows = tied_rows[np.searchsorted(tied_rows, starts)]

    # Max pain as in `_lowest_pain_index`, but on one running sum over the whole batch:
    # it is non-decreasing, so one searchsorted finds every chain's crossing at once.
    reached = np.concatenate([[0.0], np.cumsum(batch.call_oi + batch.put_oi)])
    before, totals = reached[starts], reached[ends] - reached[starts]
    crossing = np.searchsorted(reached[1:], before + puts_oi - TIE_RTOL * totals, side="left")
    pain_rows = np.clip(crossing, starts, ends - 1)

    per_chain = zip(
        calls_oi.tolist(),
        puts_oi.tolist(),
        calls_volume.tolist(),
        puts_volume.tolist(),
        batch.strikes[atm_rows].tolist(),
        (batch.call_last[atm_rows] + batch.put_last[atm_rows]).tolist(),
        batch.strikes[pain_rows].tolist(),
        calls_otm.tolist(),
        puts_otm.tolist(),
        strict=True,
    )
    return [_metrics(*fields) for fields in per_chain]


def _metrics(
    calls_oi: float,
    puts_oi: float,
    calls_volume: float,
    puts_volume: float,
    atm_strike: float,
    straddle: float,
    max_pain: float,
    calls_otm: float,
    puts_otm: float,
) -> ChainMetrics:
    # Python's round() (not np.round) in both paths: it is what the old service used,
    # and np.round can differ from it in the last place.
    return ChainMetrics(
        pcr_oi=_put_call_ratio(puts_oi, calls_oi),
        pcr_volume=_put_call_ratio(puts_volume, calls_volume),
        atm_strike=atm_strike,
        atm_straddle_price=0.0 if math.isnan(straddle) else round(straddle, 2),  # NaN: a leg is missing
        max_pain_strike=max_pain,
        total_call_oi=round(calls_oi),
        total_put_oi=round(puts_oi),
        call_buildup_otm=round(calls_otm),
        put_buildup_otm=round(puts_otm),
    )


def _put_call_ratio(puts: float, calls: float) -> float:
    return round(puts / calls, 4) if calls > 0 else 0.0


def _is_ascending(strikes: FloatArray) -> bool:
    return bool((strikes[1:] > strikes[:-1]).all())


def _atm_index(strikes: FloatArray, spot: float) -> int:
    if strikes.size == 0:
        raise ValueError("ATM strike of an empty chain")
    distance = np.abs(strikes - spot)
    tied = np.flatnonzero(distance <= distance.min() + TIE_RTOL * abs(spot))
    return int(tied[np.argmin(strikes[tied])])


def _lowest_pain_index(call_oi: FloatArray, put_oi: FloatArray) -> int:
    """Index of the lowest max-pain strike, for OI on ascending strikes.

    Pain is convex and piecewise linear in S. Between strikes j and j+1 its slope is
    Σ_{i≤j} callOI − Σ_{i>j} putOI, which never decreases with j. So the lowest minimiser
    is the first strike after which the slope is ≥ 0: the first j where
    cumsum(callOI + putOI)[j] ≥ Σ putOI. A zero slope is a tie, resolved to the lower
    strike. Only OI sums are compared, so strike values add no rounding.
    """
    reached = np.cumsum(call_oi + put_oi)
    target = put_oi.sum() - TIE_RTOL * reached[-1]
    return min(int(np.searchsorted(reached, target, side="left")), reached.size - 1)


def _check_batch(batch: ChainBatch) -> None:
    """The vectorised pass would give wrong answers, not errors, on these."""
    offsets = batch.offsets
    if offsets[0] != 0 or offsets[-1] != batch.strikes.size or not (offsets[1:] > offsets[:-1]).all():
        raise ValueError("chain offsets must cut the rows into non-empty chains")
    steps = np.diff(batch.strikes)
    steps[offsets[1:-1] - 1] = 1.0  # the step from one chain into the next is not a step
    if not (steps > 0).all():
        chain = int(np.searchsorted(offsets, np.argmin(steps > 0), side="right")) - 1
        raise ValueError(f"chain {chain}: strikes must be ascending and unique")
    # Max pain searches one running OI sum over the whole batch, which must not decrease.
    if not ((batch.call_oi >= 0).all() and (batch.put_oi >= 0).all()):
        raise ValueError("open interest must be finite and non-negative")
    if not np.isfinite(batch.spots).all():
        raise ValueError("spot prices must be finite")


def _concat(arrays: list[FloatArray]) -> FloatArray:
    if not arrays:
        return np.empty(0, dtype=np.float64)
    return np.concatenate(arrays).astype(np.float64, copy=False)
