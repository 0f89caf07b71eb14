"""Parse the three input channels, from either provider, into typed records.

`parse` is the daemon's edge: it turns a raw pub/sub payload into a `Tick`, `Quote`
or `Chain`, or raises `InvalidMessage` with one of the stable codes in `REASONS`.
It raises nothing else, whatever the bytes, so a caller can dead-letter on
`InvalidMessage` and treat any other exception as a bug.

Both providers normalise here (CONTRACT §1). A GlobalDataFeeds row is recognised
by its `instrument` field; see `quotes.gdf_row` for how its fields map, and
`fields` for what each reason code means.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Any, Final

import orjson

from enricher.chains import parse_chain
from enricher.fields import (
    BAD_EXPIRY,
    BAD_OPTION_TYPE,
    BAD_PRODUCT,
    BAD_SYMBOL,
    BAD_TIMESTAMP,
    EMPTY_CHAIN,
    MISSING_FIELD,
    NEGATIVE,
    NOT_FINITE,
    NOT_JSON,
    NOT_OBJECT,
    NOT_UTF8,
    REASONS,
    STRIKE_MISMATCH,
    TOO_LARGE,
    TOO_MANY_STRIKES,
    UNKNOWN_CHANNEL,
    WRONG_TYPE,
    count,
    event_instant,
    missing,
    non_negative,
    positive,
    product_name,
    real,
)
from enricher.quotes import gdf_row, is_gdf, synthetic_row
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING, InvalidMessage, Json, Quote, Record, Tick

__all__ = [
    "BAD_EXPIRY",
    "BAD_OPTION_TYPE",
    "BAD_PRODUCT",
    "BAD_SYMBOL",
    "BAD_TIMESTAMP",
    "EMPTY_CHAIN",
    "MISSING_FIELD",
    "NEGATIVE",
    "NOT_FINITE",
    "NOT_JSON",
    "NOT_OBJECT",
    "NOT_UTF8",
    "REASONS",
    "STRIKE_MISMATCH",
    "TOO_LARGE",
    "TOO_MANY_STRIKES",
    "UNKNOWN_CHANNEL",
    "WRONG_TYPE",
    "parse",
]

# A seam: orjson refuses NaN and overflowing literals such as 1e999, so tests swap
# in json.loads to prove the finiteness checks behind it.
_loads: Callable[[Any], Any] = orjson.loads

_TICK_PRICES: Final = ("volume", "open", "high", "low", "close")


def parse(
    channel: str,
    data: bytes | bytearray | memoryview | str,
    *,
    feed_tz: tzinfo,
    max_bytes: int = 1 << 20,
    max_strikes: int = 2000,
) -> Record:
    """The record that `data`, received on `channel`, describes.

    Naive timestamps are wall-clock time in `feed_tz`. Raises `InvalidMessage`,
    and nothing else, when the message can never be processed.
    """
    handler = _HANDLERS.get(channel) if isinstance(channel, str) else None
    if handler is None:
        raise InvalidMessage(UNKNOWN_CHANNEL, repr(channel)[:80])
    if type(data) is bytes:  # what every source gives: one check instead of two
        size = len(data)
    elif isinstance(data, bytes | bytearray | memoryview | str):
        size = data.nbytes if isinstance(data, memoryview) else len(data)
    else:
        raise InvalidMessage(WRONG_TYPE, f"payload must be bytes, not {type(data).__name__}")
    # Checked before decoding, so that a huge payload costs nothing to reject.
    if size > max_bytes:
        raise InvalidMessage(TOO_LARGE, f"{size} bytes > {max_bytes}")
    try:
        doc = _loads(data)
    except (ValueError, TypeError) as exc:
        raise _undecodable(data, exc) from None
    if type(doc) is not dict:
        raise InvalidMessage(NOT_OBJECT, f"top level is a JSON {type(doc).__name__}")
    return handler(doc, feed_tz, max_strikes)


def _undecodable(data: bytes | bytearray | memoryview | str, error: Exception) -> InvalidMessage:
    # orjson reports bad UTF-8 as a JSON error; decoding again tells the two apart,
    # and costs nothing on the valid path.
    try:
        if isinstance(data, str):
            data.encode("utf-8")
        else:
            bytes(data).decode("utf-8")
    except UnicodeError as exc:
        return InvalidMessage(NOT_UTF8, str(exc)[:200])
    return InvalidMessage(NOT_JSON, str(error)[:200])


def _tick(doc: Json, feed_tz: tzinfo, max_strikes: int) -> Tick:
    try:
        product, price, stamp, tick_id = doc["product"], doc["price"], doc["timestamp"], doc["tick_id"]
    except KeyError as exc:
        raise missing(exc.args[0]) from None
    # The real-data provider's extras are optional; null counts as absent.
    for name in _TICK_PRICES:
        value = doc.get(name)
        if value is not None:
            non_negative(value, name)
    change = doc.get("change")
    if change is not None:
        real(change, "change")
    product, price = product_name(product), positive(price, "price")
    timestamp, stamp = event_instant(stamp, feed_tz)
    return Tick(product, price, timestamp, count(tick_id, "tick_id"), doc, stamp)


def _quote(doc: Json, feed_tz: tzinfo, max_strikes: int) -> Quote:
    check = gdf_row if is_gdf(doc) else synthetic_row
    symbol, product, expiry, strike, option_type, bid, ask, last, volume, oi, iv = check(doc, None, None, None)
    if "timestamp" not in doc:
        raise missing("timestamp")
    timestamp, stamp = event_instant(doc["timestamp"], feed_tz)
    # Positional, in the order of `records.Quote`, as `check` returns them: keywords cost more.
    return Quote(symbol, product, expiry, strike, option_type, bid, ask, last, volume, oi, iv, timestamp, doc, stamp)


_HANDLERS: Final[dict[str, Callable[[Json, tzinfo, int], Record]]] = {
    UNDERLYING: _tick,
    OPTION_QUOTE: _quote,
    OPTION_CHAIN: parse_chain,
}
