"""Option chains: one product and expiry, as arrays aligned on sorted strikes.

A chain has two paths. The fast one takes a side (all calls, or all puts) whose
rows carry every field, none of them null, and checks each field across the whole
side at once with builtins that loop in C (zip, map, set, min, sum); rows may be
missing or in any order. Any other chain (a null greek, a GDF row without a bid)
and every invalid one goes row by row through `quotes`, which finds the precise
reason. The fast path therefore accepts a subset of what the row-by-row path
accepts, with the same result; the tests hold it to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo
from functools import lru_cache
from itertools import pairwise
from math import nan
from operator import itemgetter
from typing import Any, Final

import numpy as np

from enricher.fields import (
    BAD_EXPIRY,
    EMPTY_CHAIN,
    GREEKS,
    STRIKE_MISMATCH,
    TOO_MANY_STRIKES,
    WRONG_TYPE,
    event_instant,
    event_time,
    expiry_date,
    missing,
    positive,
    product_name,
    strike_values,
    valid_numbers,
)
from enricher.quotes import add_canonical_keys, gdf_row, synthetic_row
from enricher.records import Chain, InvalidMessage, Json
from enricher.timestamps import expiry_from_instrument

_SYNTHETIC: Final = itemgetter(
    "symbol",
    "product",
    "expiry",
    "strike",
    "option_type",
    "bid",
    "ask",
    "last",
    "volume",
    "open_interest",
    *GREEKS,
)
_GDF: Final = itemgetter("instrument", "price", "volume", "oi", "bid", "ask", *GREEKS)
# What a malformed row makes zip, map, min or sum raise; the fast path only gives up.
_GIVE_UP: Final = (KeyError, TypeError, ValueError, OverflowError)

# (open interest, volume, last, iv as a fraction, bid, ask) of one side, aligned on the sorted
# strikes; bid and ask are NaN where a row has none (the model reads them: analytics/model.py)
Side = tuple[Sequence[float], ...]


def parse_chain(doc: Json, feed_tz: tzinfo, max_strikes: int) -> Chain:
    """A chain's arrays, aligned on its sorted strikes.

    A strike with no call (or put) row has OI and volume 0 and a NaN last and IV.
    A GDF chain's `expiry` holds a trade time (the provider's bug), so its expiry
    comes from the rows' instruments, which must agree. Its doc then carries the
    real expiry, keeps the provider's value as `source_expiry`, and has float
    strikes. Rows without a `timestamp` (or with null) take the chain's.
    """
    try:
        product, spot, stamp = doc["product"], doc["spot_price"], doc["timestamp"]
        strikes, calls, puts = doc["strikes"], doc["calls"], doc["puts"]
    except KeyError as exc:
        raise missing(exc.args[0]) from None
    product = product_name(product)
    spot_price = positive(spot, "spot_price")
    timestamp, spelled = event_instant(stamp, feed_tz)
    for name, value in (("strikes", strikes), ("calls", calls), ("puts", puts)):
        if type(value) is not list:
            raise InvalidMessage(WRONG_TYPE, f"{name} must be a list, not {type(value).__name__}")
    if not strikes:
        raise InvalidMessage(EMPTY_CHAIN, "no strikes")
    if len(strikes) > max_strikes:
        raise InvalidMessage(TOO_MANY_STRIKES, f"{len(strikes)} > {max_strikes}")
    # More rows than strikes must repeat or invent a strike; saying so now stops a
    # padded chain from costing a check per row.
    if len(calls) > len(strikes) or len(puts) > len(strikes):
        raise InvalidMessage(STRIKE_MISMATCH, f"{len(calls)} calls, {len(puts)} puts, {len(strikes)} strikes")
    first = calls[0] if calls else puts[0] if puts else None
    gdf = type(first) is dict and "instrument" in first
    expiry: str | None = None
    if not gdf:
        if "expiry" not in doc:
            raise missing("expiry")
        expiry = expiry_date(doc["expiry"])
    values = strike_values(strikes, numeric_text=gdf)
    order = tuple(sorted(values))
    repeated = next((a for a, b in pairwise(order) if a == b), None)
    if repeated is not None:
        raise InvalidMessage(STRIKE_MISMATCH, f"strike {repeated} is listed twice")

    fast = _fast_gdf_side if gdf else _fast_synthetic_side
    call_fast = fast(calls, "CALL", product=product, expiry=expiry, order=order, stamp=stamp, feed_tz=feed_tz)
    put_fast = call_fast and fast(
        puts, "PUT", product=product, expiry=call_fast[0], order=order, stamp=stamp, feed_tz=feed_tz
    )
    if call_fast and put_fast:
        expiry, call_side, put_side = put_fast[0], call_fast[1], put_fast[1]
    else:
        expiry, call_side, put_side = _checked_sides(
            calls, puts, gdf=gdf, product=product, expiry=expiry, order=order, stamp=stamp, feed_tz=feed_tz
        )
    if expiry is None:  # unreachable: a GDF chain is recognised by having a row
        raise InvalidMessage(BAD_EXPIRY, "no expiry")
    if gdf:
        if "expiry" in doc:
            doc["source_expiry"] = doc["expiry"]
        doc["expiry"] = expiry
        doc["strikes"] = values

    # One conversion instead of nine; the rows of a C-ordered table are contiguous.
    table = np.array((order, *_interleave(call_side, put_side), *call_side[4:], *put_side[4:]), dtype=np.float64)
    # The views share one table with every holder of the record: keep them frozen too.
    table.flags.writeable = False
    return Chain(
        product=product,
        expiry=expiry,
        spot_price=spot_price,
        timestamp=timestamp,
        strikes=table[0],
        call_oi=table[1],
        put_oi=table[2],
        call_volume=table[3],
        put_volume=table[4],
        call_last=table[5],
        put_last=table[6],
        call_iv=table[7],
        put_iv=table[8],
        doc=doc,
        book=table[9:13],
        stamp=spelled,
    )


def _quoted(row: Json, key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) else nan


def _interleave(calls: Side, puts: Side) -> tuple[Sequence[float], ...]:
    return (calls[0], puts[0], calls[1], puts[1], calls[2], puts[2], calls[3], puts[3])


# A product's chains repeat the same strikes, so their symbols are worth keeping;
# 256 sides of up to max_strikes symbols bounds what a hostile feed can make it hold.
@lru_cache(maxsize=256)
def _symbols(prefix: str, order: tuple[float, ...]) -> tuple[str, ...]:
    """The synthetic symbols of one side, e.g. NIFTY20250123C21500, for the sorted strikes."""
    return tuple([f"{prefix}{int(strike)}" for strike in order])


def _valid_stamps(rows: list[Json], stamp: object, feed_tz: tzinfo) -> bool:
    """Rows' own timestamps, each distinct one read once (most equal the chain's)."""
    try:
        for row_stamp in {row.get("timestamp") for row in rows}:
            if row_stamp is not None and row_stamp != stamp:
                event_time(row_stamp, feed_tz)
    except InvalidMessage:
        return False
    return True


def _fast_synthetic_side(
    rows: list[Json],
    side: str,
    *,
    product: str,
    expiry: str | None,
    order: tuple[float, ...],
    stamp: object,
    feed_tz: tzinfo,
) -> tuple[str | None, Side] | None:
    if not rows:
        return expiry, _no_rows(len(order))
    if expiry is None:
        return None
    n = len(rows)
    prefix = f"{product}{expiry.replace('-', '')}{side[0]}"
    try:
        columns = zip(*map(_SYNTHETIC, rows), strict=True)
        symbols, products, expiries, strikes, kinds, bids, asks, lasts, volumes, ois, *greeks = columns
        valid = (
            products.count(product) == n
            and expiries.count(expiry) == n
            and kinds.count(side) == n
            and valid_numbers(bids + asks + lasts, volumes + ois, strikes + sum(greeks, ()))
            and symbols == _row_symbols(prefix, strikes, order)
            and _valid_stamps(rows, stamp, feed_tz)
        )
        placed = _place(strikes, order, (ois, volumes, lasts, greeks[-1], bids, asks)) if valid else None
    except _GIVE_UP:
        return None
    return None if placed is None else (expiry, placed)


def _fast_gdf_side(
    rows: list[Json],
    side: str,
    *,
    product: str,
    expiry: str | None,
    order: tuple[float, ...],
    stamp: object,
    feed_tz: tzinfo,
) -> tuple[str | None, Side] | None:
    if not rows:
        return expiry, _no_rows(len(order))
    n = len(rows)
    try:
        instruments, lasts, volumes, ois, bids, asks, *greeks = zip(*map(_GDF, rows), strict=True)
        products, expiries, strikes, kinds = zip(*map(expiry_from_instrument, instruments), strict=True)
        expiry = expiry or expiries[0]
        valid = (
            products.count(product) == n
            and expiries.count(expiry) == n
            and kinds.count(side) == n
            and valid_numbers(bids + asks + lasts, volumes + ois, sum(greeks, ()))
            and _valid_stamps(rows, stamp, feed_tz)
        )
        ivs = [iv / 100.0 for iv in greeks[-1]] if valid else []
        placed = _place(strikes, order, (ois, volumes, lasts, ivs, bids, asks)) if valid else None
    except _GIVE_UP:
        return None
    if placed is None:
        return None
    symbols = _row_symbols(f"{product}{expiry.replace('-', '')}{side[0]}", strikes, order)
    for row, symbol, strike, last, oi in zip(rows, symbols, strikes, lasts, ois, strict=True):
        add_canonical_keys(
            row,
            symbol=symbol,
            product=product,
            expiry=expiry,
            strike=strike,
            option_type=side,
            last=float(last),
            oi=oi,
        )
    return expiry, placed


def _no_rows(n: int) -> tuple[list[float], ...]:
    """Columns for a side with no rows: OI and volume 0, last, IV, bid and ask unknown."""
    return [0.0] * n, [0.0] * n, [nan] * n, [nan] * n, [nan] * n, [nan] * n


def _row_symbols(prefix: str, strikes: tuple[Any, ...], order: tuple[float, ...]) -> tuple[str, ...]:
    # A complete side in strike order, the usual case, has its symbols cached.
    return _symbols(prefix, order) if strikes == order else tuple([f"{prefix}{int(s)}" for s in strikes])


def _place(strikes: tuple[Any, ...], order: tuple[float, ...], columns: Side) -> Side | None:
    """A side's columns moved onto the sorted strikes; None if a strike is repeated.

    Raises KeyError for a strike not in `order`, which the fast path takes as giving up.
    """
    if strikes == order:
        return columns
    position = {strike: i for i, strike in enumerate(order)}
    slots = [position[strike] for strike in strikes]
    if len(set(slots)) != len(slots):
        return None
    placed = _no_rows(len(order))
    for target, values in zip(placed, columns, strict=True):
        for slot, value in zip(slots, values, strict=True):
            target[slot] = value
    return placed


def _checked_sides(
    calls: list[Json],
    puts: list[Json],
    *,
    gdf: bool,
    product: str,
    expiry: str | None,
    order: tuple[float, ...],
    stamp: object,
    feed_tz: tzinfo,
) -> tuple[str | None, Side, Side]:
    """Both sides row by row: slower, but it names the row and the reason."""
    position = {strike: i for i, strike in enumerate(order)}
    check = gdf_row if gdf else synthetic_row
    sides: list[Side] = []
    for name, side, rows in (("calls", "CALL", calls), ("puts", "PUT", puts)):
        oi_column, volume_column, last_column, iv_column, bid_column, ask_column = _no_rows(len(order))
        filled: set[int] = set()
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise InvalidMessage(WRONG_TYPE, f"{name}[{i}] must be an object, not {type(row).__name__}")
            try:
                fields = check(row, product, expiry, side)
                row_stamp = row.get("timestamp")
                if row_stamp is not None and row_stamp != stamp:
                    event_time(row_stamp, feed_tz)
            except InvalidMessage as exc:
                raise InvalidMessage(exc.reason, f"{name}[{i}]: {exc.detail}") from None
            slot = position.get(fields[3])
            if slot is None or slot in filled:
                problem = "is not in strikes" if slot is None else "has two rows"
                raise InvalidMessage(STRIKE_MISMATCH, f"{name}[{i}]: strike {fields[3]} {problem}")
            filled.add(slot)
            expiry = fields[2]
            last_column[slot] = fields[7]
            volume_column[slot] = fields[8]
            oi_column[slot] = fields[9]
            iv = fields[10]
            if iv is not None:
                iv_column[slot] = iv
            # As the row holds them, not as checked: a GDF row's missing bid is 0 to the
            # check, but no bid (NaN) to the model.
            bid_column[slot], ask_column[slot] = _quoted(row, "bid"), _quoted(row, "ask")
        sides.append((oi_column, volume_column, last_column, iv_column, bid_column, ask_column))
    return expiry, sides[0], sides[1]
