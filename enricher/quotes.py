"""Field checks and option rows in either provider's shape, for `messages` and `chains`.

Every check raises `InvalidMessage` with one of the stable reason codes below. The
row checks run once per option row, tens of thousands of times a second, so each
starts with one cheap test that passes for a valid row and only falls back to the
field-by-field checks, which find the precise reason, when that test fails.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from math import isfinite
from typing import Any, Final

from enricher.records import InvalidMessage, Json
from enricher.timestamps import expiry_from_instrument, parse_event_time, parse_expiry

TOO_LARGE: Final = "too_large"
NOT_UTF8: Final = "not_utf8"
NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
NOT_FINITE: Final = "not_finite"
NEGATIVE: Final = "negative"
BAD_TIMESTAMP: Final = "bad_timestamp"
BAD_EXPIRY: Final = "bad_expiry"
BAD_PRODUCT: Final = "bad_product"
BAD_SYMBOL: Final = "bad_symbol"
BAD_OPTION_TYPE: Final = "bad_option_type"
STRIKE_MISMATCH: Final = "strike_mismatch"
EMPTY_CHAIN: Final = "empty_chain"
TOO_MANY_STRIKES: Final = "too_many_strikes"
UNKNOWN_CHANNEL: Final = "unknown_channel"
REASONS: Final = (
    TOO_LARGE,
    NOT_UTF8,
    NOT_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    NOT_FINITE,
    NEGATIVE,
    BAD_TIMESTAMP,
    BAD_EXPIRY,
    BAD_PRODUCT,
    BAD_SYMBOL,
    BAD_OPTION_TYPE,
    STRIKE_MISMATCH,
    EMPTY_CHAIN,
    TOO_MANY_STRIKES,
    UNKNOWN_CHANNEL,
)

OPTION_TYPES: Final = ("CALL", "PUT")
GREEKS: Final = ("delta", "gamma", "vega", "theta", "iv")
# exact types, so that bool (a subclass of int) is not a number
_REAL: Final = frozenset((int, float))
_INT: Final = frozenset((int,))
_PRODUCT: Final = re.compile(r"[A-Z][A-Z0-9&_-]{0,31}")

# (symbol, product, expiry, strike, option_type, bid, ask, last, volume, open_interest, iv):
# a plain tuple, in the order of `records.Quote`, because a row of a chain is
# checked but never becomes a Quote, and a tuple is the cheapest thing to return.
RowFields = tuple[str, str, str, float, str, float, float, float, int, int, float | None]


def show(value: object) -> str:
    """A short repr for an error detail: a hostile payload must not fill the log."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def missing(field: object) -> InvalidMessage:
    return InvalidMessage(MISSING_FIELD, f"no {field!r}")


def real(value: object, field: str) -> float:
    """A finite JSON number as a float."""
    if isinstance(value, float):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise InvalidMessage(NOT_FINITE, f"{field} {show(value)} does not fit a float") from None
    else:
        raise InvalidMessage(WRONG_TYPE, f"{field} must be a number, not {type(value).__name__}")
    if not isfinite(number):
        raise InvalidMessage(NOT_FINITE, f"{field} is {number}")
    return number


def non_negative(value: object, field: str) -> float:
    number = real(value, field)
    if number < 0:
        raise InvalidMessage(NEGATIVE, f"{field} is {number}")
    return number


def positive(value: object, field: str) -> float:
    number = real(value, field)
    if number <= 0:
        raise InvalidMessage(NEGATIVE, f"{field} is {number}, not > 0")
    return number


def count(value: object, field: str) -> int:
    """A JSON integer ≥ 0; 12.0 is not one, because a counter sent as a float is a feed bug."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(WRONG_TYPE, f"{field} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise InvalidMessage(NEGATIVE, f"{field} is {value}")
    return value


def text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidMessage(WRONG_TYPE, f"{field} must be a string, not {type(value).__name__}")
    return value


def product_name(value: object, expected: str | None = None) -> str:
    """A valid product name, equal to `expected` when one is given (a chain's rows)."""
    name = text(value, "product")
    if _PRODUCT.fullmatch(name) is None:
        raise InvalidMessage(BAD_PRODUCT, f"{show(name)} is not a product name")
    if expected is not None and name != expected:
        raise InvalidMessage(BAD_PRODUCT, f"{name!r} in a {expected!r} chain")
    return name


def expiry_date(value: object, expected: str | None = None) -> str:
    try:
        day = parse_expiry(text(value, "expiry"))
    except ValueError as exc:
        raise InvalidMessage(BAD_EXPIRY, str(exc)) from None
    if expected is not None and day != expected:
        raise InvalidMessage(BAD_EXPIRY, f"{day} in a {expected} chain")
    return day


def option_kind(value: object, expected: str | None = None) -> str:
    kind = text(value, "option_type")
    if kind not in OPTION_TYPES:
        raise InvalidMessage(BAD_OPTION_TYPE, f"{show(kind)} is neither CALL nor PUT")
    if expected is not None and kind != expected:
        raise InvalidMessage(BAD_OPTION_TYPE, f"a {kind} row among the {expected}s")
    return kind


def event_time(value: object, feed_tz: tzinfo) -> datetime:
    try:
        return parse_event_time(text(value, "timestamp"), feed_tz)
    except ValueError as exc:  # OverflowError is not one, but parse_event_time converts it
        raise InvalidMessage(BAD_TIMESTAMP, str(exc)) from None


def valid_numbers(prices: tuple[Any, ...], counts: tuple[Any, ...], others: tuple[Any, ...]) -> bool:
    """True when `prices` are numbers ≥ 0, `counts` integers ≥ 0 and `others` numbers,
    all finite. False means "look closer": the field-by-field checks then find the
    reason, or nothing wrong when only a sum overflowed."""
    try:
        reals = prices + others
        return (
            set(map(type, reals)) <= _REAL
            and set(map(type, counts)) <= _INT
            and min(prices) >= 0
            and min(counts) >= 0
            # min() can step over a NaN and a sum of finite floats can overflow,
            # but a finite sum has finite terms.
            and isfinite(sum(reals))
        )
    except OverflowError:  # an int too large for a float (orjson never makes one)
        return False


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
    try:
        row_product, row_expiry, strike, kind = expiry_from_instrument(text(instrument, "instrument"))
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
    row.update(
        symbol=symbol,
        product=product,
        strike=strike,
        expiry=expiry,
        option_type=option_type,
        last=last,
        open_interest=oi,
    )
