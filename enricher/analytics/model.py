"""Black-76 model analytics of chains and quotes: price used, forward, time to expiry, IV,
greeks; `expiry` adds what the whole expiry says.

Pure numpy, no I/O, so it runs inline or in the process pool. `model_chains` solves every
option of every chain in ONE `implied_vol` call, because the solver costs ~0.15 ms a call
(on a real chain's mix of strikes) whatever its size; `model_chain` is the batch of one,
and gets the same bits for its chain as any batch would (see `black76`).

Conventions, each with its reason:
- Price used: the mid when bid > 0, ask >= bid and (ask - bid) / mid <= `max_spread`, else
  the last trade if > 0, else none. A sane book is the freshest price; a stale last beats
  nothing.
- Forward: the median, over the `parity_strikes` strikes nearest spot that have both a
  call and a put price, of K + (C - P)·e^{rT}; spot when there are none. Parity needs no
  model, and the median shrugs off one stale leg.
- Time to expiry: ACT/365 in seconds, from the message's event time to the expiry date at
  the product's close (wall clock in its exchange's zone, so DST is right): the feed's
  convention. T <= 0 is "expired": no IV, no greeks.
- IV: each option is solved on its own price (so ITM options get an IV and greeks too),
  but the smile, ATM IV, skew and GEX gamma use the OTM side first (see `expiry`).
- Statuses: `STATUSES[code]`, the `black76` codes plus "no_price" and "no_forward".
  Precedence: expired, no_forward, no_price, then the solver's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from functools import lru_cache
from itertools import accumulate
from operator import itemgetter
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from enricher.analytics import black76
from enricher.analytics.expiry import (
    PRICES_USED,
    STATUSES,
    ChainModel,
    ChainSnapshot,
    ExpiryInputs,
    OptionColumns,
    Side,
    expiry_model,
)
from enricher.analytics.lean import constants, every, filled, indices, some
from enricher.records import Chain, FloatArray, Json, Quote

__all__ = [
    "PRICES_USED",
    "STATUSES",
    "ChainModel",
    "ChainSnapshot",
    "ModelConfig",
    "for_pool",
    "model_chain",
    "model_chains",
    "model_quotes",
    "quote_ivs",
    "time_to_expiry",
]

Close = tuple[int, int, str]  # (hour, minute, IANA zone) at which an expiry date expires
StatusArray = npt.NDArray[np.uint8]

NO_PRICE: Final = 6  # codes beyond black76's, named in STATUSES
NO_FORWARD: Final = 7
MID, LAST, NONE = 0, 1, 2  # named in PRICES_USED
_ZERO, _HALF, _NAN = constants(0.0, 0.5, math.nan)  # 0-d: see `lean.constants`

NSE_PRODUCTS: Final = ("NIFTY", "BANKNIFTY", "FINNIFTY", "SENSEX", "MIDCPNIFTY")
NSE_CLOSE: Final[Close] = (15, 30, "Asia/Kolkata")
US_CLOSE: Final[Close] = (16, 0, "America/New_York")
SECONDS_PER_YEAR: Final = 365.0 * 86_400.0

_BOOK_KEYS: Final = ("strike", "bid", "ask")
_BOOK: Final = tuple(itemgetter(key) for key in _BOOK_KEYS)


def _nse_closes() -> dict[str, Close]:
    return dict.fromkeys(NSE_PRODUCTS, NSE_CLOSE)


def _lot_sizes() -> dict[str, float]:
    return {"NIFTY": 75.0, "BANKNIFTY": 30.0, "FINNIFTY": 65.0, "SENSEX": 20.0, "MIDCPNIFTY": 120.0}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything the model takes from settings; picklable, so the pool gets it per call."""

    r: float = 0.0  # continuously compounded
    max_spread: float = 0.5  # widest (ask - bid) / mid for the mid to be used
    parity_strikes: int = 3
    closes: Mapping[str, Close] = field(default_factory=_nse_closes)
    default_close: Close = US_CLOSE
    lot_sizes: Mapping[str, float] = field(default_factory=_lot_sizes)
    default_lot_size: float = 100.0
    gex_sign: int = 1  # +1: dealers long calls, short puts; -1: the reverse

    def __post_init__(self) -> None:
        if not math.isfinite(self.r):
            raise ValueError("r must be finite")
        if not self.max_spread >= 0.0:
            raise ValueError("max_spread must be >= 0")
        if self.parity_strikes < 1:
            raise ValueError("parity_strikes must be >= 1")
        if self.gex_sign not in (1, -1):
            raise ValueError("gex_sign must be +1 or -1")
        for hour, minute, zone in (*self.closes.values(), self.default_close):
            time(hour, minute)  # ValueError if out of range
            ZoneInfo(zone)  # ZoneInfoNotFoundError (a KeyError) if unknown

    def close(self, product: str) -> Close:
        return self.closes.get(product, self.default_close)

    def lot_size(self, product: str) -> float:
        return self.lot_sizes.get(product, self.default_lot_size)


@lru_cache(maxsize=4096)
def expiry_instant(expiry: str, close: Close) -> datetime | None:
    """The instant at which `expiry` (YYYY-MM-DD) expires, in UTC; None if it is not a date.

    In UTC because the event times are: datetime subtracts two times of one tzinfo directly,
    and two of different ones through both utcoffset()s, ten times slower (0.3 µs a quote).
    """
    try:
        day = date.fromisoformat(expiry)
    except ValueError:
        return None
    hour, minute, zone = close
    local = datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(zone))
    try:
        return local.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of UTC: the same instant, subtracted the slow way
        return local


def time_to_expiry(product: str, expiry: str, at: datetime, config: ModelConfig) -> float:
    """ACT/365 years from `at` (aware) to the expiry's close; negative once past; NaN if unreadable."""
    end = expiry_instant(expiry, config.close(product))
    return math.nan if end is None else (end - at).total_seconds() / SECONDS_PER_YEAR


def price_used(bid: FloatArray, ask: FloatArray, last: FloatArray, max_spread: float) -> tuple[FloatArray, StatusArray]:
    """(price, code into PRICES_USED) per option; the price is NaN where the code is NONE."""
    with np.errstate(all="ignore"):
        mid = _HALF * (bid + ask)
        mid_ok = (bid > _ZERO) & (ask >= bid) & np.isfinite(mid) & (ask - bid <= max_spread * mid)
        if every(mid_ok):  # a sane book on every option: most chains
            return mid, np.zeros(mid.shape, dtype=np.uint8)  # MID
        last_ok = (last > _ZERO) & np.isfinite(last)
    code = np.where(mid_ok, MID, np.where(last_ok, LAST, NONE)).astype(np.uint8)
    return np.where(mid_ok, mid, np.where(last_ok, last, _NAN)), code


def parity_forward(
    strikes: FloatArray,
    call_price: FloatArray,
    put_price: FloatArray,
    *,
    spot: float,
    years: float,
    config: ModelConfig,
) -> tuple[float, str]:
    """(forward, "parity" or "spot"): see the module's conventions."""
    both = indices(np.isfinite(call_price) & np.isfinite(put_price))
    if both.size:
        with np.errstate(all="ignore"):
            if both.size == strikes.size:  # the usual chain: every strike has both
                nearest = np.argsort(np.abs(strikes - spot), kind="stable")[: config.parity_strikes]
            else:
                nearest = both[np.argsort(np.abs(strikes[both] - spot), kind="stable")[: config.parity_strikes]]
            implied = strikes[nearest] + (call_price[nearest] - put_price[nearest]) * np.exp(config.r * years)
        values = sorted(implied.tolist())
        middle = len(values) // 2
        forward = values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])
        if math.isfinite(forward) and forward > 0.0:
            return forward, "parity"
    return spot, "spot"


def book(chain: Chain) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(call bid, call ask, put bid, put ask) on the chain's strikes; NaN where a row or a side
    of its book is missing. The parser leaves them in `chain.book`; a chain built without it
    has them read from its rows in `doc`."""
    if chain.book is not None and chain.book.shape == (4, chain.strikes.size):
        return chain.book[0], chain.book[1], chain.book[2], chain.book[3]
    return (*_side_book(chain.doc.get("calls"), chain.strikes), *_side_book(chain.doc.get("puts"), chain.strikes))


def for_pool(chain: Chain) -> Chain:
    """A copy of `chain` to send to the process pool: its arrays and book, without its doc.

    A parsed chain's doc holds every row as a dict: pickling it there and back costs ~2 ms
    for 200 strikes, several times the model itself; the model reads none of it.
    """
    return replace(chain, doc={}, book=np.stack(book(chain)))


def _side_book(rows: object, strikes: FloatArray) -> tuple[FloatArray, FloatArray]:
    n = strikes.size
    if not isinstance(rows, list) or not rows:
        return np.full(n, np.nan), np.full(n, np.nan)
    try:  # every row has all three as numbers: the usual case, at C speed
        at, bid, ask = (np.fromiter(map(get, rows), dtype=np.float64, count=len(rows)) for get in _BOOK)
    except (KeyError, TypeError, ValueError, OverflowError):
        at, bid, ask = (np.array([_number(row, key) for row in rows], dtype=np.float64) for key in _BOOK_KEYS)
    if at.shape == strikes.shape and every(at == strikes):
        return bid, ask  # rows in strike order: the usual case
    on_strikes = np.full(n, np.nan), np.full(n, np.nan)
    if n:
        slot = np.minimum(np.searchsorted(strikes, at), n - 1)
        found = strikes[slot] == at
        for column, values in zip(on_strikes, (bid, ask), strict=True):
            column[slot[found]] = values[found]
    return on_strikes


def _number(row: object, key: str) -> float:
    value = row.get(key) if isinstance(row, dict) else None
    return float(value) if isinstance(value, int | float) else math.nan


def _implied(
    forward: FloatArray,
    strike: FloatArray,
    years: FloatArray,
    value: FloatArray,
    is_call: npt.NDArray[np.bool_],
    r: float,
) -> tuple[FloatArray, StatusArray, npt.NDArray[np.bool_]]:
    """(IV, status, status is OK) per option: the solver's, under the model's own statuses;
    the IV is NaN wherever the status is not OK."""
    iv, status = black76.implied_vol(forward, strike, years, value, is_call, r=r)
    ok = status == black76.OK
    if every(ok):  # the usual chain
        return iv, status, ok
    # The model's own statuses, over the solver's. Each one's options are BAD_INPUT or
    # EXPIRED to the solver, so its IV is NaN already, and OK stays OK.
    for overriding, code in (
        (~np.isfinite(value), NO_PRICE),
        (~((forward > 0.0) & np.isfinite(forward)), NO_FORWARD),
        (years <= 0.0, black76.EXPIRED),
    ):
        if some(overriding):
            status[overriding] = code
    return iv, status, ok


class _Solved:
    """IV and greeks of a batch of options, NaN wherever the status is not OK: the `model`
    columns of each option, with its price used."""

    def __init__(
        self,
        forward: FloatArray,
        strike: FloatArray,
        years: FloatArray,
        price: tuple[FloatArray, StatusArray],
        is_call: npt.NDArray[np.bool_],
        r: float,
    ) -> None:
        value, code = price
        iv, status, ok = _implied(forward, strike, years, value, is_call, r)
        everywhere = every(ok)
        values = np.array([iv, *black76.black76_greeks(forward, strike, years, iv, is_call, r=r), value])
        if not everywhere:
            values[1:5, ~ok] = np.nan  # black76_greeks gives gamma = vega = 0, not NaN, at a NaN vol
        self.columns = OptionColumns(values, np.array([code, status]))

    def side(self, rows: slice) -> Side:
        iv, delta, gamma, _, _, price = self.columns.values[:, rows]
        return Side(price, iv, delta, gamma)


def model_chain(chain: Chain, config: ModelConfig, previous: ChainSnapshot | None) -> tuple[ChainModel, ChainSnapshot]:
    """The model of one chain, and the snapshot to keep for its next chain (see `model_chains`)."""
    return model_chains([(chain, previous)], config)[0]


def model_chains(
    items: Sequence[tuple[Chain, ChainSnapshot | None]], config: ModelConfig
) -> list[tuple[ChainModel, ChainSnapshot]]:
    """Model many chains at once: the function the process pool runs.

    `previous` is the snapshot last kept for the chain's (product, expiry), or None. The
    snapshot returned is the one to keep: the new chain's, or `previous` itself if that is
    newer (a chain that arrives out of order is compared with nothing).
    Raises ValueError if a snapshot is of another product or expiry than its chain.
    """
    for chain, previous in items:
        if previous is not None and (previous.product, previous.expiry) != (chain.product, chain.expiry):
            raise ValueError(f"snapshot of {previous.product} {previous.expiry} for chain {chain.identity}")
    if not items:
        return []
    chains = [chain for chain, _ in items]
    sizes = [chain.strikes.size for chain in chains]
    offsets = [0, *accumulate(sizes)]
    total = offsets[-1]
    # Every option of every chain in one batch: all the calls, then all the puts.
    books = [book(chain) for chain in chains]
    price = price_used(
        _concat([b[0] for b in books] + [b[2] for b in books]),
        _concat([b[1] for b in books] + [b[3] for b in books]),
        _concat([c.call_last for c in chains] + [c.put_last for c in chains]),
        config.max_spread,
    )
    call_price, put_price = price[0][:total], price[0][total:]
    strikes = _concat([chain.strikes for chain in chains] * 2)
    years = [time_to_expiry(c.product, c.expiry, c.timestamp, config) for c in chains]
    forwards = [
        parity_forward(
            strikes[start:end], call_price[start:end], put_price[start:end], spot=c.spot_price, years=t, config=config
        )
        for c, t, start, end in zip(chains, years, offsets, offsets[1:], strict=False)
    ]
    is_call = np.zeros(2 * total, dtype=np.bool_)
    is_call[:total] = True
    solved = _Solved(
        _per_option([f for f, _ in forwards], sizes),
        strikes,
        _per_option(years, sizes),
        price,
        is_call,
        config.r,
    )
    columns = solved.columns
    out = []
    for i, (chain, previous) in enumerate(items):
        start, end = offsets[i], offsets[i + 1]
        rows = slice(start, end)  # of one side's arrays; `solved` has the calls' rows, then the puts'
        calls, puts = rows, slice(total + start, total + end)
        snapshot = ChainSnapshot(
            product=chain.product,
            expiry=chain.expiry,
            timestamp=chain.timestamp,
            strikes=chain.strikes,
            call_oi=chain.call_oi,
            put_oi=chain.put_oi,
            call_price=call_price[rows].copy(),  # a copy, not a view pinning the whole batch
            put_price=put_price[rows].copy(),
        )
        compare_with = previous
        if previous is not None and previous.timestamp >= chain.timestamp:
            snapshot, compare_with = previous, None
        inputs = ExpiryInputs(
            chain=chain,
            calls=solved.side(calls),
            puts=solved.side(puts),
            forward=forwards[i][0],
            forward_source=forwards[i][1],
            years=years[i],
            r=config.r,
            lot=config.lot_size(chain.product),
            gex_sign=config.gex_sign,
        )
        model = expiry_model(inputs, compare_with, columns.part(calls), columns.part(puts))
        out.append((model, snapshot))
    return out


def model_quotes(quotes: Sequence[Quote], forwards: Sequence[float | None], config: ModelConfig) -> list[Json]:
    """The `model` dict of each quote, all solved in one batch.

    `forwards[i]` is quote i's forward: the latest chain forward of its (product, expiry),
    else its product's latest spot, else None (status "no_forward").
    """
    if not quotes:
        return []
    forward, strike, years, price, is_call = _quote_inputs(quotes, forwards, config)
    return _Solved(forward, strike, years, price, is_call, config.r).columns.models()


def quote_ivs(quotes: Sequence[Quote], forwards: Sequence[float | None], config: ModelConfig) -> list[float | None]:
    """Each quote's model IV alone, None where its status is not OK: what the surface needs
    when the model is not stored (persistence off), at the cost of the solver alone."""
    if not quotes:
        return []
    forward, strike, years, (value, _), is_call = _quote_inputs(quotes, forwards, config)
    iv, _, ok = _implied(forward, strike, years, value, is_call, config.r)
    return [v if good and math.isfinite(v) else None for v, good in zip(iv.tolist(), ok.tolist(), strict=True)]


def _quote_inputs(
    quotes: Sequence[Quote], forwards: Sequence[float | None], config: ModelConfig
) -> tuple[FloatArray, FloatArray, FloatArray, tuple[FloatArray, StatusArray], npt.NDArray[np.bool_]]:
    """(forward, strike, years, price used, is call) of each quote (see `model_quotes`)."""
    if len(forwards) != len(quotes):
        raise ValueError(f"{len(forwards)} forwards for {len(quotes)} quotes")
    strike, bid, ask, last = np.array([(q.strike, q.bid, q.ask, q.last) for q in quotes], dtype=np.float64).T
    is_call = np.array([q.option_type == "CALL" for q in quotes])
    years = np.array([time_to_expiry(q.product, q.expiry, q.timestamp, config) for q in quotes])
    forward = np.array([math.nan if f is None else f for f in forwards], dtype=np.float64)
    return forward, strike, years, price_used(bid, ask, last, config.max_spread), is_call


def _per_option(values: list[float], sizes: list[int]) -> FloatArray:
    """Each chain's value on each of its options, the calls' then the puts' (`model_chains`' order)."""
    if len(sizes) == 1:  # one chain, as inline: np.repeat costs ten times more
        return filled((2 * sizes[0],), values[0])
    return np.repeat(np.array(values * 2, dtype=np.float64), sizes * 2)


def _concat(arrays: list[FloatArray]) -> FloatArray:
    return np.concatenate(arrays).astype(np.float64, copy=False)
