"""Field checks, and the stable reason codes they raise as `InvalidMessage`.

Each check takes a decoded JSON value and returns it typed, or raises with the
reason a dead-letter record will carry. `valid_numbers` is the exception: a cheap
all-at-once test for the hot path, which says only "valid" or "look closer".
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from math import isfinite
from typing import Any, Final

from enricher.records import InvalidMessage
from enricher.timestamps import parse_event_instant, parse_expiry

# Stable codes: dead-letter records and metrics carry them, so never rename one.
TOO_LARGE: Final = "too_large"  # payload over max_bytes; checked before decoding
NOT_UTF8: Final = "not_utf8"
NOT_JSON: Final = "not_json"  # includes NaN, Infinity and 1e999, which orjson refuses
NOT_OBJECT: Final = "not_object"  # top level is not a JSON object
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"  # e.g. a bool or string where a number belongs, 12.0 for a count
NOT_FINITE: Final = "not_finite"  # NaN, ±inf, or an integer too large for float or int64
NEGATIVE: Final = "negative"  # a price, count or strike below its bound (price, spot, strike > 0)
BAD_TIMESTAMP: Final = "bad_timestamp"  # not ISO-8601, or outside 1970..2200
BAD_EXPIRY: Final = "bad_expiry"  # not YYYY-MM-DD, or not the chain's expiry
BAD_PRODUCT: Final = "bad_product"  # not [A-Z][A-Z0-9&_-]{0,31}, or not the chain's product
BAD_SYMBOL: Final = "bad_symbol"  # symbol disagrees with its fields, or instrument unreadable
BAD_OPTION_TYPE: Final = "bad_option_type"  # not CALL/PUT, or on the wrong side of a chain
STRIKE_MISMATCH: Final = "strike_mismatch"  # row strike not in strikes, or a strike repeated
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
# MongoDB stores integers in 64 bits; orjson decodes up to 2**64 - 1.
INT64_MAX: Final = 2**63 - 1
_PRODUCT: Final = re.compile(r"[A-Z][A-Z0-9&_-]{0,31}")


def show(value: object) -> str:
    """A short repr for an error detail: a hostile payload must not fill the log."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


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
    if value > INT64_MAX:
        raise InvalidMessage(NOT_FINITE, f"{field} {show(value)} does not fit 64 bits")
    return value


def text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidMessage(WRONG_TYPE, f"{field} must be a string, not {type(value).__name__}")
    return value


# Names and expiries already found valid: a feed repeats a handful of each, and a set lookup
# costs a tenth of checking one again. Bounded: past the bound, new ones are checked each time.
_KNOWN_MAX: Final = 4096
_KNOWN_PRODUCTS: Final[set[str]] = set()
_KNOWN_EXPIRIES: Final[set[str]] = set()


def _remember(known: set[str], value: str) -> None:
    if len(known) < _KNOWN_MAX:
        known.add(value)


def product_name(value: object, expected: str | None = None) -> str:
    """A valid product name, equal to `expected` when one is given (a chain's rows)."""
    if type(value) is str and value in _KNOWN_PRODUCTS:
        name = value
    else:
        name = text(value, "product")
        if _PRODUCT.fullmatch(name) is None:
            raise InvalidMessage(BAD_PRODUCT, f"{show(name)} is not a product name")
        _remember(_KNOWN_PRODUCTS, name)
    if expected is not None and name != expected:
        raise InvalidMessage(BAD_PRODUCT, f"{name!r} in a {expected!r} chain")
    return name


def expiry_date(value: object, expected: str | None = None) -> str:
    if type(value) is str and value in _KNOWN_EXPIRIES:
        day = value  # spelled exactly YYYY-MM-DD, as parse_expiry returns it
    else:
        spelled = text(value, "expiry")  # outside the try: InvalidMessage is a ValueError too
        try:
            day = parse_expiry(spelled)
        except ValueError as exc:
            raise InvalidMessage(BAD_EXPIRY, str(exc)) from None
        _remember(_KNOWN_EXPIRIES, day)
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
    return event_instant(value, feed_tz)[0]


def event_instant(value: object, feed_tz: tzinfo) -> tuple[datetime, str]:
    """The event time (aware, UTC) and its stamp, `records.utc_iso` of it."""
    spelled = text(value, "timestamp")  # outside the try: InvalidMessage is a ValueError too
    try:
        return parse_event_instant(spelled, feed_tz)
    except ValueError as exc:  # parse_event_instant turns OverflowError into one
        raise InvalidMessage(BAD_TIMESTAMP, str(exc)) from None


def valid_numbers(prices: tuple[Any, ...], counts: tuple[Any, ...], others: tuple[Any, ...]) -> bool:
    """True when `prices` are numbers ≥ 0, `counts` 64-bit integers ≥ 0 and `others` numbers,
    all finite. False means "look closer": the field-by-field checks then find the
    reason, or nothing wrong when only a sum overflowed."""
    try:
        reals = prices + others
        return (
            set(map(type, reals)) <= _REAL
            and set(map(type, counts)) <= _INT
            and min(prices) >= 0
            and min(counts) >= 0
            # Non-negative terms: a sum in range has terms in range.
            and sum(counts) <= INT64_MAX
            # min() can step over a NaN and a sum of finite floats can overflow,
            # but a finite sum has finite terms.
            and isfinite(sum(reals))
        )
    except OverflowError:  # an int too large for a float (orjson never makes one)
        return False


def strike_values(strikes: list[Any], numeric_text: bool) -> list[float]:
    """A chain's `strikes` as floats; `numeric_text` admits GDF's strings like "21500"."""
    try:
        kinds = set(map(type, strikes))
        if numeric_text and kinds == {str} and all(map(_is_decimal, strikes)):
            values = list(map(float, strikes))
        elif kinds <= _REAL:
            values = strikes
        else:
            values = []
        # min() can step over a NaN, but the sum cannot.
        if values and min(values) > 0 and isfinite(sum(values)):
            return [float(s) for s in values]
    except OverflowError:
        pass
    return [_strike(value, numeric_text) for value in strikes]


def _is_decimal(spelled: str) -> bool:
    # float() alone would take 'nan', 'inf', ' 1' and '1_000'.
    return spelled.isascii() and spelled.replace(".", "", 1).isdigit()


def _strike(value: object, numeric_text: bool) -> float:
    if numeric_text and isinstance(value, str):
        if not _is_decimal(value[1:] if value[:1] == "-" else value):
            raise InvalidMessage(WRONG_TYPE, f"strike {show(value)} is not a number")
        value = float(value)
    return positive(value, "strike")
