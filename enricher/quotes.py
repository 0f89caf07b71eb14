"""One option row, in either provider's shape, checked into canonical fields.

Used for a quote on its own and, row by row, for a chain the fast path declined.
Each row starts with one cheap test that passes for a valid row, and only falls
back to the field-by-field checks, which find the precise reason, when it fails.
"""

from __future__ import annotations

from typing import Any

from enricher.fields import (
    BAD_EXPIRY,
    BAD_OPTION_TYPE,
    BAD_SYMBOL,
    GREEKS,
    count,
    expiry_date,
    missing,
    non_negative,
    option_kind,
    positive,
    product_name,
    real,
    show,
    text,
    valid_numbers,
)
from enricher.records import InvalidMessage, Json
from enricher.timestamps import expiry_from_instrument

# (symbol, product, expiry, strike, option_type, bid, ask, last, volume, open_interest, iv):
# a plain tuple, in the order of `records.Quote`, because a row of a chain is
# checked but never becomes a Quote, and a tuple is the cheapest thing to return.
RowFields = tuple[str, str, str, float, str, float, float, float, int, int, float | None]


def is_gdf(row: Json) -> bool:
    """Whether a row is in GlobalDataFeeds' shape: checking it adds the canonical keys to it."""
    return "instrument" in row


def _check_greeks(values: tuple[Any, ...]) -> None:
    """The optional greeks, each a finite number when present (null counts as absent)."""
    for name, value in zip(GREEKS, values, strict=True):
        if value is not None:
            real(value, name)


def synthetic_row(row: Json, product: str | None, expiry: str | None, option_type: str | None) -> RowFields:
    """Check a quote in the synthetic shape. `product`, `expiry` and `option_type`
    are what a chain expects of its rows, or None for a quote on its own."""
    try:
        symbol = row["symbol"]
        row_product = row["product"]
        row_expiry = row["expiry"]
        strike = row["strike"]
        kind = row["option_type"]
        bid = row["bid"]
        ask = row["ask"]
        last = row["last"]
        volume = row["volume"]
        oi = row["open_interest"]
    except KeyError as exc:
        raise missing(exc.args[0]) from None
    # Within a chain, equal to the chain's already-checked value is enough.
    if product is None or row_product != product:
        product = product_name(row_product, product)
    if expiry is None or row_expiry != expiry:
        expiry = expiry_date(row_expiry, expiry)
    if option_type is None or kind != option_type:
        option_type = option_kind(kind, option_type)
    get = row.get
    greeks = (get("delta"), get("gamma"), get("vega"), get("theta"), get("iv"))
    if not (valid_numbers((bid, ask, last), (volume, oi), (strike, *greeks)) and strike > 0):
        strike = positive(strike, "strike")
        bid, ask, last = non_negative(bid, "bid"), non_negative(ask, "ask"), non_negative(last, "last")
        volume, oi = count(volume, "volume"), count(oi, "open_interest")
        _check_greeks(greeks)
    expected = f"{product}{expiry.replace('-', '')}{option_type[0]}{int(strike)}"
    if symbol != expected:
        raise InvalidMessage(BAD_SYMBOL, f"{show(symbol)} should be {expected!r}")
    iv = greeks[4]
    return (
        symbol,
        product,
        expiry,
        float(strike),
        option_type,
        float(bid),
        float(ask),
        float(last),
        volume,
        oi,
        None if iv is None else float(iv),
    )


def gdf_row(row: Json, product: str | None, expiry: str | None, option_type: str | None) -> RowFields:
    """Check a quote in GlobalDataFeeds' shape and add the canonical keys to it in place.

    Product, expiry, strike and type come from `instrument`, which is authoritative:
    the canonical keys overwrite any the row had. `price` is the last price, `oi`
    the open interest, and `iv` is in percent (the returned IV is a fraction; the
    row keeps the provider's percent). A missing or null `bid` or `ask` counts as
    0.0: the provider omits a side of the book that is empty. Adding the keys twice
    is harmless, so a chain may check a row again.
    """
    try:
        instrument = row["instrument"]
        last = row["price"]
        volume = row["volume"]
        oi = row["oi"]
    except KeyError as exc:
        raise missing(exc.args[0]) from None
    name = text(instrument, "instrument")  # outside the try: InvalidMessage is a ValueError too
    try:
        row_product, row_expiry, strike, kind = expiry_from_instrument(name)
    except ValueError as exc:
        raise InvalidMessage(BAD_SYMBOL, str(exc)) from None
    if product is None or row_product != product:
        product = product_name(row_product, product)
    if expiry is not None and row_expiry != expiry:
        raise InvalidMessage(BAD_EXPIRY, f"{instrument!r} in a chain of expiry {expiry}")
    if option_type is not None and kind != option_type:
        raise InvalidMessage(BAD_OPTION_TYPE, f"{instrument!r} among the {option_type}s")
    get = row.get
    bid, ask = get("bid"), get("ask")
    bid = 0.0 if bid is None else bid
    ask = 0.0 if ask is None else ask
    greeks = (get("delta"), get("gamma"), get("vega"), get("theta"), get("iv"))
    if not valid_numbers((bid, ask, last), (volume, oi), greeks):
        bid, ask, last = non_negative(bid, "bid"), non_negative(ask, "ask"), non_negative(last, "price")
        volume, oi = count(volume, "volume"), count(oi, "oi")
        _check_greeks(greeks)
    symbol = f"{product}{row_expiry.replace('-', '')}{kind[0]}{int(strike)}"
    last = float(last)
    add_canonical_keys(
        row,
        symbol=symbol,
        product=product,
        expiry=row_expiry,
        strike=strike,
        option_type=kind,
        last=last,
        oi=oi,
    )
    iv = greeks[4]
    return (
        symbol,
        product,
        row_expiry,
        strike,
        kind,
        float(bid),
        float(ask),
        last,
        volume,
        oi,
        None if iv is None else iv / 100.0,
    )


def add_canonical_keys(
    row: Json,
    *,
    symbol: str,
    product: str,
    expiry: str,
    strike: float,
    option_type: str,
    last: float,
    oi: int,
) -> None:
    """Give a GDF row the synthetic shape's names too, so that readers need know only those."""
    # Item by item: update(**names) builds a dict first and costs twice as much.
    row["symbol"] = symbol
    row["product"] = product
    row["strike"] = strike
    row["expiry"] = expiry
    row["option_type"] = option_type
    row["last"] = last
    row["open_interest"] = oi
