from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enricher import chains, messages
from enricher.analytics.model import book
from enricher.messages import REASONS, parse
from enricher.records import (
    OPTION_CHAIN,
    OPTION_QUOTE,
    UNDERLYING,
    Chain,
    InvalidMessage,
    Quote,
    Record,
    Tick,
)

SAMPLES = Path(__file__).parents[1] / "samples"
KOLKATA = ZoneInfo("Asia/Kolkata")
PRODUCT = re.compile(r"[A-Z][A-Z0-9&_-]{0,31}")
Doc = dict[str, Any]


def load(name: str) -> Doc:
    doc: Doc = orjson.loads((SAMPLES / f"{name}.json").read_bytes())
    return doc


def parse_doc(channel: str, doc: object, **options: Any) -> Record:
    options.setdefault("feed_tz", UTC)
    return parse(channel, json.dumps(doc).encode(), **options)


def reason(channel: str, doc: object, **options: Any) -> str:
    with pytest.raises(InvalidMessage) as caught:
        parse_doc(channel, doc, **options)
    assert caught.value.reason in REASONS
    return caught.value.reason


@contextmanager
def permissive_json() -> Iterator[None]:
    """json.loads decodes NaN, Infinity and 1e999, which orjson refuses, and ints of any size."""
    with mock.patch.object(messages, "_loads", json.loads):
        yield


@contextmanager
def row_by_row() -> Iterator[None]:
    with (
        mock.patch.object(chains, "_fast_synthetic_side", return_value=None),
        mock.patch.object(chains, "_fast_gdf_side", return_value=None),
    ):
        yield


# ---------------------------------------------------------------- the samples


def test_synthetic_tick() -> None:
    data = (SAMPLES / "synthetic_underlying.json").read_bytes()
    tick = parse(UNDERLYING, data, feed_tz=KOLKATA)
    assert isinstance(tick, Tick)
    assert (tick.product, tick.price, tick.tick_id) == ("NIFTY", 21503.45, 123)
    assert tick.timestamp == datetime(2025, 1, 20, 4, 45, 30, 123456, tzinfo=UTC)
    assert tick.doc == orjson.loads(data)
    assert tick.identity == "NIFTY:123:2025-01-20T04:45:30.123456+00:00"


def test_gdf_tick_keeps_the_extras() -> None:
    tick = parse(UNDERLYING, (SAMPLES / "gdf_underlying.json").read_bytes(), feed_tz=UTC)
    assert isinstance(tick, Tick)
    assert tick.tick_id == 1737368130123
    assert {k: tick.doc[k] for k in ("volume", "open", "high", "low", "close", "change")} == {
        "volume": 1250,
        "open": 21450.0,
        "high": 21540.1,
        "low": 21431.9,
        "close": 21440.25,
        "change": 0.29,
    }


def test_synthetic_quote() -> None:
    data = (SAMPLES / "synthetic_option_quote.json").read_bytes()
    quote = parse(OPTION_QUOTE, data, feed_tz=UTC)
    assert isinstance(quote, Quote)
    assert quote.symbol == "NIFTY20250123C21500"
    assert (quote.product, quote.expiry, quote.strike, quote.option_type) == (
        "NIFTY",
        "2025-01-23",
        21500.0,
        "CALL",
    )
    assert (quote.bid, quote.ask, quote.last, quote.volume, quote.open_interest) == (
        172.51,
        174.89,
        173.7,
        8096,
        62078,
    )
    assert quote.iv == 0.2228
    assert quote.timestamp == datetime(2025, 1, 20, 10, 15, 30, 123456, tzinfo=UTC)
    assert quote.doc == orjson.loads(data)


def test_synthetic_chain() -> None:
    data = (SAMPLES / "synthetic_option_chain.json").read_bytes()
    chain = parse(OPTION_CHAIN, data, feed_tz=KOLKATA)
    source = orjson.loads(data)
    assert isinstance(chain, Chain)
    assert (chain.product, chain.expiry, chain.spot_price) == ("NIFTY", "2025-01-23", 21503.45)
    assert chain.timestamp == datetime(2025, 1, 20, 4, 45, 30, 123456, tzinfo=UTC)
    assert chain.strikes.tolist() == sorted(source["strikes"])
    for side, oi, volume, last, iv in (
        ("calls", chain.call_oi, chain.call_volume, chain.call_last, chain.call_iv),
        ("puts", chain.put_oi, chain.put_volume, chain.put_last, chain.put_iv),
    ):
        rows = sorted(source[side], key=lambda row: row["strike"])
        assert oi.tolist() == [row["open_interest"] for row in rows]
        assert volume.tolist() == [row["volume"] for row in rows]
        assert last.tolist() == [row["last"] for row in rows]
        assert iv.tolist() == [row["iv"] for row in rows]
    assert chain.doc == source


def test_gdf_chain() -> None:
    data = (SAMPLES / "gdf_option_chain.json").read_bytes()
    chain = parse(OPTION_CHAIN, data, feed_tz=KOLKATA)
    source = orjson.loads(data)
    assert isinstance(chain, Chain)
    assert chain.expiry == "2025-01-23"
    assert chain.doc["expiry"] == "2025-01-23"
    assert chain.doc["source_expiry"] == source["expiry"]
    assert chain.doc["strikes"] == [float(s) for s in source["strikes"]]
    assert chain.strikes.tolist() == [float(s) for s in source["strikes"]]
    assert chain.call_oi.tolist() == [row["oi"] for row in source["calls"]]
    assert chain.put_last.tolist() == [row["price"] for row in source["puts"]]
    assert chain.call_iv.tolist() == [row["iv"] / 100 for row in source["calls"]]
    first = chain.doc["calls"][0]
    assert {k: first[k] for k in ("symbol", "product", "strike", "expiry", "option_type", "last", "open_interest")} == {
        "symbol": "NIFTY20250123C21000",
        "product": "NIFTY",
        "strike": 21000.0,
        "expiry": "2025-01-23",
        "option_type": "CALL",
        "last": 690.71,
        "open_interest": 14393,
    }
    # the provider's names stay, percent IV included
    assert {k: first[k] for k in source["calls"][0]} == source["calls"][0]
    assert chain.doc["puts"][3]["symbol"] == "NIFTY20250123P21150"


@pytest.mark.parametrize("name", ["synthetic_option_chain", "gdf_option_chain"])
def test_fast_and_row_by_row_paths_agree_on_the_samples(name: str) -> None:
    data = (SAMPLES / f"{name}.json").read_bytes()
    fast = parse(OPTION_CHAIN, data, feed_tz=UTC)
    with row_by_row():
        slow = parse(OPTION_CHAIN, data, feed_tz=UTC)
    assert same_record(fast, slow)


def test_payload_types() -> None:
    data = (SAMPLES / "synthetic_underlying.json").read_bytes()
    for payload in (bytearray(data), memoryview(data), data.decode()):
        assert isinstance(parse(UNDERLYING, payload, feed_tz=UTC), Tick)


# ---------------------------------------------------------------- behaviour


def test_naive_time_is_read_in_the_feed_zone_and_an_offset_wins() -> None:
    doc = load("synthetic_underlying") | {"timestamp": "2025-01-20T10:15:30"}
    assert parse_doc(UNDERLYING, doc, feed_tz=KOLKATA).timestamp == datetime(2025, 1, 20, 4, 45, 30, tzinfo=UTC)
    doc["timestamp"] = "2025-01-20T10:15:30Z"
    assert parse_doc(UNDERLYING, doc, feed_tz=KOLKATA).timestamp == datetime(2025, 1, 20, 10, 15, 30, tzinfo=UTC)
    doc["timestamp"] = "2025-01-20T10:15:30-05:00"
    assert parse_doc(UNDERLYING, doc, feed_tz=KOLKATA).timestamp == datetime(2025, 1, 20, 15, 15, 30, tzinfo=UTC)


def test_tick_optional_fields() -> None:
    doc = load("gdf_underlying") | {"change": -3.5, "volume": None}
    assert isinstance(parse_doc(UNDERLYING, doc), Tick)
    assert reason(UNDERLYING, doc | {"close": -1.0}) == "negative"
    assert reason(UNDERLYING, doc | {"volume": "1250"}) == "wrong_type"


def test_ints_are_numbers() -> None:
    doc = load("synthetic_option_quote") | {"strike": 21500, "bid": 172, "iv": 0}
    quote = parse_doc(OPTION_QUOTE, doc)
    assert isinstance(quote, Quote)
    assert (type(quote.strike), type(quote.bid), type(quote.iv)) == (float, float, float)


def test_null_greeks_count_as_absent() -> None:
    doc = load("synthetic_option_quote") | {"iv": None, "delta": None}
    del doc["gamma"]
    quote = parse_doc(OPTION_QUOTE, doc)
    assert isinstance(quote, Quote)
    assert quote.iv is None


def gdf_quote() -> Doc:
    row: Doc = load("gdf_option_chain")["puts"][10]
    return row


def test_gdf_quote() -> None:
    row = gdf_quote()
    quote = parse_doc(OPTION_QUOTE, row, feed_tz=KOLKATA)
    assert isinstance(quote, Quote)
    assert quote.symbol == "NIFTY20250123P21500"
    assert (quote.product, quote.expiry, quote.strike, quote.option_type) == (
        "NIFTY",
        "2025-01-23",
        21500.0,
        "PUT",
    )
    assert (quote.last, quote.open_interest, quote.volume) == (row["price"], row["oi"], row["volume"])
    assert quote.iv == pytest.approx(row["iv"] / 100)
    assert quote.doc["last"] == row["price"]
    assert quote.doc["open_interest"] == row["oi"]
    assert {k: quote.doc[k] for k in row} == row


def test_gdf_quote_without_a_book_has_zero_bid_and_ask() -> None:
    row = gdf_quote()
    del row["bid"]
    row["ask"] = None
    quote = parse_doc(OPTION_QUOTE, row)
    assert isinstance(quote, Quote)
    assert (quote.bid, quote.ask) == (0.0, 0.0)


def shuffled_chain(name: str, seed: int) -> Doc:
    doc = load(name)
    rng = random.Random(seed)
    for key in ("strikes", "calls", "puts"):
        rng.shuffle(doc[key])
    return doc


@pytest.mark.parametrize("name", ["synthetic_option_chain", "gdf_option_chain"])
def test_unsorted_input_gives_sorted_aligned_arrays(name: str) -> None:
    ordered = parse_doc(OPTION_CHAIN, load(name))
    assert isinstance(ordered, Chain)
    for seed in range(3):
        doc = shuffled_chain(name, seed)
        assert doc["strikes"] != sorted(doc["strikes"], key=float)
        shuffled = parse_doc(OPTION_CHAIN, doc)
        assert isinstance(shuffled, Chain)
        assert same_arrays(ordered, shuffled)


@pytest.mark.parametrize("name", ["synthetic_option_chain", "gdf_option_chain"])
def test_missing_rows_have_zero_oi_and_nan_prices(name: str) -> None:
    doc = load(name)
    del doc["calls"][0], doc["puts"][20], doc["puts"][5]
    chain = parse_doc(OPTION_CHAIN, doc)
    assert isinstance(chain, Chain)
    assert chain.expiry == "2025-01-23"
    assert (chain.call_oi[0], chain.call_volume[0]) == (0.0, 0.0)
    assert math.isnan(chain.call_last[0])
    assert math.isnan(chain.call_iv[0])
    assert (chain.put_oi[20], chain.put_oi[5]) == (0.0, 0.0)
    assert math.isnan(chain.put_last[5])
    assert math.isnan(chain.put_iv[20])
    assert not math.isnan(chain.put_last[4])


def _book_from_rows(chain: Chain) -> np.ndarray:
    """What the model reads from the rows themselves when a chain has no parsed book."""
    return np.array(book(dataclasses.replace(chain, book=None)))


@pytest.mark.parametrize("name", ["synthetic_option_chain", "gdf_option_chain"])
@pytest.mark.parametrize("change", ["none", "shuffled", "missing_rows", "slow_path"])
def test_the_parsed_book_is_what_the_rows_quote(name: str, change: str) -> None:
    doc = shuffled_chain(name, 1) if change == "shuffled" else load(name)
    if change == "missing_rows":
        del doc["calls"][3], doc["puts"][0]
    if change == "slow_path" and name.startswith("gdf"):
        doc["calls"][2]["bid"] = None  # 0 to the row-by-row check, but no bid to the model
        del doc["puts"][4]["ask"]
    elif change == "slow_path":
        del doc["calls"][2]["delta"]  # optional, but the fast path wants every field
    chain = parse_doc(OPTION_CHAIN, doc)
    assert isinstance(chain, Chain)
    assert chain.book is not None
    assert chain.book.shape == (4, chain.strikes.size)
    assert np.array_equal(chain.book, _book_from_rows(chain), equal_nan=True)


def test_a_chain_with_no_rows() -> None:
    doc = load("synthetic_option_chain") | {"calls": [], "puts": []}
    chain = parse_doc(OPTION_CHAIN, doc)
    assert isinstance(chain, Chain)
    assert not chain.call_oi.any()
    assert not chain.put_volume.any()
    assert np.isnan(chain.call_last).all()
    assert np.isnan(chain.put_iv).all()


def test_string_strikes() -> None:
    doc = load("gdf_option_chain")
    doc["strikes"] = [s + ".0" if i % 2 else s for i, s in enumerate(doc["strikes"])]
    chain = parse_doc(OPTION_CHAIN, doc)
    assert isinstance(chain, Chain)
    assert chain.strikes[1] == 21050.0
    assert all(type(s) is float for s in chain.doc["strikes"])
    # GDF may send numbers, too; the synthetic feed may not send strings
    assert isinstance(parse_doc(OPTION_CHAIN, doc | {"strikes": [float(s) for s in doc["strikes"]]}), Chain)
    synthetic = load("synthetic_option_chain")
    synthetic["strikes"] = [str(s) for s in synthetic["strikes"]]
    assert reason(OPTION_CHAIN, synthetic) == "wrong_type"


def test_gdf_chain_without_the_provider_expiry() -> None:
    doc = load("gdf_option_chain")
    del doc["expiry"]
    chain = parse_doc(OPTION_CHAIN, doc)
    assert isinstance(chain, Chain)
    assert chain.doc["expiry"] == "2025-01-23"
    assert "source_expiry" not in chain.doc


@pytest.mark.parametrize("name", ["synthetic_option_chain", "gdf_option_chain"])
def test_row_timestamps(name: str) -> None:
    doc = load(name)
    for row in doc["calls"]:
        del row["timestamp"]
    doc["puts"][3]["timestamp"] = "2025-01-20T10:15:29Z"
    assert isinstance(parse_doc(OPTION_CHAIN, doc), Chain)
    doc["puts"][4]["timestamp"] = "2025-01-20T10:15:61"
    assert reason(OPTION_CHAIN, doc) == "bad_timestamp"


def test_chain_arrays_are_read_only() -> None:
    chain = parse(OPTION_CHAIN, (SAMPLES / "synthetic_option_chain.json").read_bytes(), feed_tz=UTC)
    assert isinstance(chain, Chain)
    with pytest.raises(ValueError, match="read-only"):
        chain.call_oi[0] = 1.0


def test_error_detail_names_the_row() -> None:
    doc = load("synthetic_option_chain")
    doc["puts"][7]["bid"] = -1.0
    with pytest.raises(InvalidMessage, match=r"puts\[7\]: bid") as caught:
        parse_doc(OPTION_CHAIN, doc)
    assert caught.value.reason == "negative"


# ---------------------------------------------------------------- every reason code


def tick(**changes: Any) -> Doc:
    return load("synthetic_underlying") | changes


def quote(**changes: Any) -> Doc:
    return load("synthetic_option_quote") | changes


def chain(name: str = "synthetic_option_chain", **changes: Any) -> Doc:
    return load(name) | changes


def gdf_chain(**changes: Any) -> Doc:
    return chain("gdf_option_chain", **changes)


def without(doc: Doc, *keys: str) -> Doc:
    for key in keys:
        del doc[key]
    return doc


def edit_row(doc: Doc, side: str, index: int, **changes: Any) -> Doc:
    doc[side][index].update(changes)
    return doc


def drop_row_key(doc: Doc, side: str, index: int, key: str) -> Doc:
    del doc[side][index][key]
    return doc


def gdf_strikes_with(first: str) -> list[str]:
    strikes: list[str] = load("gdf_option_chain")["strikes"]
    return [first, *strikes[1:]]


def duplicate_row(doc: Doc) -> Doc:
    doc["calls"][1] = doc["calls"][0]
    return doc


RAW = "raw"  # the case's doc is already the payload
CASES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("unknown_channel", "market:nope", tick(), {}),
    ("unknown_channel", "enriched:underlying", tick(), {}),
    ("too_large", UNDERLYING, tick(), {"max_bytes": 50}),
    ("not_utf8", UNDERLYING, b'{"product": "\xff"}', {}),
    ("not_utf8", UNDERLYING, b'{"product": "\xed\xa0\x80"}', {}),  # an encoded surrogate
    ("not_json", UNDERLYING, b'{"product":', {}),
    ("not_json", UNDERLYING, b"", {}),
    ("not_json", UNDERLYING, b'{"price": NaN}', {}),
    ("not_json", UNDERLYING, b'{"price": 1e999}', {}),  # orjson refuses what would be inf
    ("not_object", UNDERLYING, b"[1, 2]", {}),
    ("not_object", OPTION_CHAIN, b"null", {}),
    ("missing_field", UNDERLYING, without(tick(), "price"), {}),
    ("missing_field", UNDERLYING, without(tick(), "tick_id"), {}),
    ("missing_field", OPTION_QUOTE, without(quote(), "bid"), {}),
    ("missing_field", OPTION_QUOTE, without(quote(), "timestamp"), {}),
    ("missing_field", OPTION_QUOTE, without(gdf_quote(), "oi"), {}),
    ("missing_field", OPTION_CHAIN, without(chain(), "strikes"), {}),
    ("missing_field", OPTION_CHAIN, without(chain(), "expiry"), {}),
    ("missing_field", OPTION_CHAIN, drop_row_key(chain(), "puts", 2, "open_interest"), {}),
    ("missing_field", OPTION_CHAIN, drop_row_key(gdf_chain(), "calls", 2, "instrument"), {}),
    ("wrong_type", UNDERLYING, tick(price="21503.45"), {}),
    ("wrong_type", UNDERLYING, tick(price=True), {}),
    ("wrong_type", UNDERLYING, tick(tick_id=123.0), {}),
    ("wrong_type", UNDERLYING, tick(product=5), {}),
    ("wrong_type", UNDERLYING, tick(timestamp=1737368130), {}),
    ("wrong_type", OPTION_QUOTE, quote(volume=10.5), {}),
    ("wrong_type", OPTION_QUOTE, quote(delta="0.5"), {}),
    ("wrong_type", OPTION_QUOTE, quote(option_type=None), {}),
    ("wrong_type", OPTION_QUOTE, gdf_quote() | {"instrument": 5}, {}),
    ("wrong_type", OPTION_CHAIN, chain(calls={}), {}),
    ("wrong_type", OPTION_CHAIN, chain(strikes="21000"), {}),
    ("wrong_type", OPTION_CHAIN, edit_row(chain(), "calls", 0, last=False), {}),
    ("wrong_type", OPTION_CHAIN, gdf_chain(strikes=gdf_strikes_with("abc")), {}),
    ("wrong_type", OPTION_CHAIN, gdf_chain(strikes=gdf_strikes_with(" 21000")), {}),
    ("wrong_type", OPTION_CHAIN, gdf_chain(strikes=gdf_strikes_with("nan")), {}),
    ("not_finite", UNDERLYING, tick(tick_id=2**63), {}),  # orjson decodes up to 2**64 - 1
    ("negative", UNDERLYING, tick(price=0), {}),
    ("negative", UNDERLYING, tick(price=-1.5), {}),
    ("negative", UNDERLYING, tick(tick_id=-1), {}),
    ("negative", OPTION_QUOTE, quote(bid=-0.01), {}),
    ("negative", OPTION_QUOTE, quote(open_interest=-1), {}),
    ("negative", OPTION_QUOTE, gdf_quote() | {"price": -2.0}, {}),
    ("negative", OPTION_CHAIN, chain(spot_price=0.0), {}),
    ("negative", OPTION_CHAIN, gdf_chain(strikes=gdf_strikes_with("-21000")), {}),
    ("negative", OPTION_CHAIN, gdf_chain(strikes=gdf_strikes_with("0")), {}),
    ("negative", OPTION_CHAIN, edit_row(chain(), "puts", 20, volume=-5), {}),
    ("bad_timestamp", UNDERLYING, tick(timestamp="yesterday"), {}),
    ("bad_timestamp", UNDERLYING, tick(timestamp="2500-01-01T00:00:00"), {}),
    ("bad_timestamp", OPTION_QUOTE, quote(timestamp="2025-01-20T10:15:30+25:00"), {}),
    ("bad_timestamp", OPTION_CHAIN, chain(timestamp=""), {}),
    ("bad_expiry", OPTION_QUOTE, quote(expiry="20250123"), {}),
    ("bad_expiry", OPTION_CHAIN, chain(expiry="2025/01/23"), {}),
    ("bad_expiry", OPTION_CHAIN, chain(expiry="2025-01-30"), {}),  # rows say 2025-01-23
    ("bad_expiry", OPTION_CHAIN, edit_row(gdf_chain(), "puts", 9, instrument="NIFTY_30JAN2025_21450_PE"), {}),
    ("bad_product", UNDERLYING, tick(product="nifty"), {}),
    ("bad_product", UNDERLYING, tick(product=""), {}),
    ("bad_product", UNDERLYING, tick(product="N" * 33), {}),
    ("bad_product", UNDERLYING, tick(product="NIFTY\n"), {}),
    ("bad_product", OPTION_QUOTE, gdf_quote() | {"instrument": "nifty_23JAN2025_21500_PE"}, {}),
    ("bad_product", OPTION_CHAIN, edit_row(chain(), "calls", 4, product="BANKNIFTY"), {}),
    (
        "bad_product",
        OPTION_CHAIN,
        edit_row(gdf_chain(), "calls", 4, instrument="BANKNIFTY_23JAN2025_21200_CE"),
        {},
    ),
    ("bad_symbol", OPTION_QUOTE, quote(symbol="NIFTY20250123C21550"), {}),
    ("bad_symbol", OPTION_QUOTE, quote(symbol="NIFTY20250123P21500"), {}),
    ("bad_symbol", OPTION_QUOTE, gdf_quote() | {"instrument": "NIFTY23JAN202521500PE"}, {}),
    ("bad_symbol", OPTION_CHAIN, edit_row(chain(), "calls", 3, symbol="X"), {}),
    (
        "bad_symbol",
        OPTION_CHAIN,
        edit_row(gdf_chain(), "calls", 3, instrument="NIFTY_23JAN2025_21150_XE"),
        {},
    ),
    ("bad_option_type", OPTION_QUOTE, quote(option_type="call"), {}),
    ("bad_option_type", OPTION_CHAIN, edit_row(chain(), "calls", 0, option_type="PUT"), {}),
    (
        "bad_option_type",
        OPTION_CHAIN,
        edit_row(gdf_chain(), "puts", 0, instrument="NIFTY_23JAN2025_21000_CE"),
        {},
    ),
    (
        "strike_mismatch",
        OPTION_CHAIN,
        edit_row(chain(), "calls", 0, strike=20950.0, symbol="NIFTY20250123C20950"),
        {},
    ),
    (
        "strike_mismatch",
        OPTION_CHAIN,
        chain(strikes=[21000.0, 21000, *load("synthetic_option_chain")["strikes"][1:]]),
        {},
    ),
    ("strike_mismatch", OPTION_CHAIN, duplicate_row(chain()), {}),
    ("strike_mismatch", OPTION_CHAIN, chain(strikes=[21000.0]), {}),  # more rows than strikes
    (
        "strike_mismatch",
        OPTION_CHAIN,
        edit_row(gdf_chain(), "calls", 0, instrument="NIFTY_23JAN2025_21025_CE"),
        {},
    ),
    ("empty_chain", OPTION_CHAIN, chain(strikes=[], calls=[], puts=[]), {}),
    ("too_many_strikes", OPTION_CHAIN, chain(), {"max_strikes": 20}),
]
# orjson cannot make a non-finite number, so these go through the permissive decoder
NON_FINITE: list[tuple[str, str, Any, dict[str, Any]]] = [
    (
        "not_finite",
        UNDERLYING,
        b'{"product": "X", "price": 1e999, "timestamp": "2025-01-20", "tick_id": 1}',
        {},
    ),
    ("not_finite", UNDERLYING, json.dumps(tick(tick_id=10**30)).encode(), {}),
    ("not_finite", OPTION_QUOTE, json.dumps(quote(delta=float("nan"))).encode(), {}),
    ("not_finite", OPTION_QUOTE, json.dumps(quote(ask=float("inf"))).encode(), {}),
    ("not_finite", OPTION_QUOTE, json.dumps(quote(strike=10**400)).encode(), {}),
    ("not_finite", OPTION_CHAIN, json.dumps(chain(spot_price=float("-inf"))).encode(), {}),
    ("not_finite", OPTION_CHAIN, json.dumps(edit_row(chain(), "calls", 2, iv=float("nan"))).encode(), {}),
    ("not_finite", OPTION_CHAIN, json.dumps(edit_row(chain(), "calls", 2, volume=2**63)).encode(), {}),
    ("not_finite", OPTION_CHAIN, json.dumps(edit_row(gdf_chain(), "puts", 2, price=10**400)).encode(), {}),
]
PERMISSIVE = {case[2] for case in NON_FINITE}
CASES += NON_FINITE


@pytest.mark.parametrize(("expected", "channel", "doc", "options"), CASES)
def test_reason(expected: str, channel: str, doc: Any, options: dict[str, Any]) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with permissive_json() if data in PERMISSIVE else nullcontext(), pytest.raises(InvalidMessage) as caught:
        parse(channel, data, feed_tz=UTC, **options)
    assert caught.value.reason == expected, caught.value.detail
    if not isinstance(doc, bytes) and channel == OPTION_CHAIN:
        with row_by_row(), pytest.raises(InvalidMessage) as slow:
            parse(channel, data, feed_tz=UTC, **options)
        assert slow.value.reason == expected


def test_every_reason_is_tested() -> None:
    assert {case[0] for case in CASES} == set(REASONS)
    assert len(set(REASONS)) == len(REASONS)


def test_payload_must_be_bytes() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse(UNDERLYING, None, feed_tz=UTC)  # type: ignore[arg-type]
    assert caught.value.reason == "wrong_type"


def test_too_large_is_checked_before_decoding() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse(UNDERLYING, b"\xff" * 100, feed_tz=UTC, max_bytes=99)
    assert caught.value.reason == "too_large"


def traps() -> Iterator[tuple[str, Doc, str | None]]:
    """Chains built to slip past a check that works on a whole side at once."""
    small = chain(strikes=[1.0, 2.0])
    small["calls"] = [
        row | {"strike": s, "symbol": f"NIFTY20250123C{s}"} for row, s in zip(small["calls"][:2], (1, 2), strict=True)
    ]
    small["puts"] = [
        row | {"strike": s, "symbol": f"NIFTY20250123P{s}"} for row, s in zip(small["puts"][:2], (1, 2), strict=True)
    ]
    yield "ints for floats", small, None
    bool_strike = json.loads(json.dumps(small))
    bool_strike["calls"][0]["strike"] = True  # True == 1.0, but it is no number
    yield "bool strike", bool_strike, "wrong_type"
    zero_bid = json.loads(json.dumps(small))
    zero_bid["puts"][1]["bid"] = -0.0
    yield "negative zero", zero_bid, None
    swapped = json.loads(json.dumps(small))
    swapped["calls"][0]["symbol"], swapped["calls"][1]["symbol"] = "NIFTY20250123C2", "NIFTY20250123C1"
    yield "symbols swapped", swapped, "bad_symbol"
    huge = chain()
    for row in huge["calls"]:
        row["delta"] = 1.7e308  # finite each, but the sum overflows
    yield "overflowing sum", huge, None


@pytest.mark.parametrize(("case", "doc", "expected"), [pytest.param(*t, id=t[0]) for t in traps()])
def test_fast_path_traps(case: str, doc: Doc, expected: str | None) -> None:
    data = json.dumps(doc).encode()
    fast = outcome(OPTION_CHAIN, data)
    with row_by_row():
        slow = outcome(OPTION_CHAIN, data)
    assert (fast if isinstance(fast, str) else None) == expected
    assert same_record(fast, slow)


# ---------------------------------------------------------------- fuzzing

CHANNELS = (UNDERLYING, OPTION_QUOTE, OPTION_CHAIN)
SAMPLE_FOR = {
    "synthetic_underlying": UNDERLYING,
    "gdf_underlying": UNDERLYING,
    "synthetic_option_quote": OPTION_QUOTE,
    "gdf_quote": OPTION_QUOTE,
    "synthetic_option_chain": OPTION_CHAIN,
    "gdf_option_chain": OPTION_CHAIN,
}
BIG = "__1e999__"  # becomes the literal 1e999 in the payload
SPECIAL = st.sampled_from(
    [
        *(0, -1, 0.0, -0.0, 1e308, -1e-300, 2**63, 2**64, 10**400, math.inf, -math.inf, math.nan, BIG),
        *(True, False, None, "", "21500", "2025-01-23", "2025-01-20T10:15:30", "NIFTY", "CALL", "PUT"),
        "NIFTY_23JAN2025_21500_CE",
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | SPECIAL,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def sample_doc(name: str) -> Doc:
    return gdf_quote() if name == "gdf_quote" else load(name)


def places(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON value, so that a test can pick one to change."""
    found: list[tuple[Any, Any]] = []
    keys: Any = value.keys() if isinstance(value, dict) else range(len(value)) if isinstance(value, list) else ()
    for key in keys:
        found.append((value, key))
        found.extend(places(value[key]))
    return found


@st.composite
def mutated_samples(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SAMPLE_FOR)))
    doc = sample_doc(name)
    if SAMPLE_FOR[name] == OPTION_CHAIN and draw(st.booleans()):
        # any order and any subset of rows is valid, and must not leave the fast path
        for side in ("calls", "puts", "strikes"):
            doc[side] = draw(st.permutations(doc[side]))
        for side in ("calls", "puts"):
            doc[side] = doc[side][: draw(st.integers(0, len(doc[side])))]
    for _ in range(draw(st.integers(0, 3))):
        spots = places(doc)
        if not spots:
            break
        container, key = draw(st.sampled_from(spots))
        if draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(JSON)
    data = json.dumps(doc).encode().replace(f'"{BIG}"'.encode(), b"1e999")
    return SAMPLE_FOR[name], data


def check_record(record: Record) -> None:
    """What every consumer may rely on, whatever the payload was."""
    assert record.timestamp.tzinfo is UTC
    assert 1970 <= record.timestamp.year <= 2200
    assert PRODUCT.fullmatch(record.product)
    if isinstance(record, Tick):
        assert finite(record.price)
        assert record.price > 0
        assert type(record.tick_id) is int
        assert 0 <= record.tick_id < 2**63
    elif isinstance(record, Quote):
        for price in (record.bid, record.ask, record.last):
            assert finite(price)
            assert price >= 0
        assert finite(record.strike)
        assert record.strike > 0
        for number in (record.volume, record.open_interest):
            assert type(number) is int
            assert 0 <= number < 2**63
        assert record.iv is None or (type(record.iv) is float and math.isfinite(record.iv))
        assert record.option_type in ("CALL", "PUT")
        expiry = record.expiry.replace("-", "")
        assert record.symbol == f"{record.product}{expiry}{record.option_type[0]}{int(record.strike)}"
        assert record.doc["symbol"] == record.symbol
    else:
        strikes = record.strikes
        assert strikes.dtype == np.float64
        assert strikes.size > 0
        assert np.isfinite(strikes).all()
        assert (strikes > 0).all()
        assert (np.diff(strikes) > 0).all()
        for counts in (record.call_oi, record.put_oi, record.call_volume, record.put_volume):
            assert counts.shape == strikes.shape
            assert np.isfinite(counts).all()
            assert (counts >= 0).all()
        for values in (record.call_last, record.put_last, record.call_iv, record.put_iv):
            assert values.shape == strikes.shape
            assert not np.isinf(values).any()
        for last in (record.call_last, record.put_last):
            assert (last[~np.isnan(last)] >= 0).all()
        assert finite(record.spot_price)
        assert record.spot_price > 0
        assert record.doc["expiry"] == record.expiry


def finite(number: object) -> bool:
    return type(number) is float and math.isfinite(number)


def outcome(channel: str, data: bytes) -> Record | str:
    """The record, checked, or the reason it was refused; anything else raised fails the test."""
    try:
        record = parse(channel, data, feed_tz=KOLKATA)
    except InvalidMessage as exc:
        reason = exc.reason
    else:
        check_record(record)
        return record
    assert reason in REASONS
    return reason


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(CHANNELS), st.binary(max_size=200))
def test_any_bytes(channel: str, data: bytes) -> None:
    outcome(channel, data)


@FUZZ
@given(st.sampled_from(CHANNELS), JSON)
def test_any_json(channel: str, value: Any) -> None:
    outcome(channel, json.dumps(value).encode())


@FUZZ
@given(mutated_samples())
def test_mutated_samples(case: tuple[str, bytes]) -> None:
    outcome(*case)


@FUZZ
@given(mutated_samples())
def test_mutated_samples_with_non_finite_numbers(case: tuple[str, bytes]) -> None:
    with permissive_json():
        outcome(*case)


@FUZZ
@given(mutated_samples())
def test_fast_path_accepts_only_what_row_by_row_accepts(case: tuple[str, bytes]) -> None:
    channel, data = case
    with permissive_json():
        fast = outcome(channel, data)
        with row_by_row():
            slow = outcome(channel, data)
    assert same_record(fast, slow) if isinstance(fast, Chain) else fast == slow


def same_arrays(a: Chain, b: Chain) -> bool:
    names = (
        "strikes",
        "call_oi",
        "put_oi",
        "call_volume",
        "put_volume",
        "call_last",
        "put_last",
        "call_iv",
        "put_iv",
        "book",
    )
    return all(np.array_equal(getattr(a, n), getattr(b, n), equal_nan=True) for n in names)


def same_record(a: object, b: object) -> bool:
    if isinstance(a, Chain) and isinstance(b, Chain):
        return same_arrays(a, b) and (a.product, a.expiry, a.spot_price, a.timestamp, a.doc) == (
            b.product,
            b.expiry,
            b.spot_price,
            b.timestamp,
            b.doc,
        )
    return a == b


def test_check_record_accepts_the_samples() -> None:
    for name, channel in SAMPLE_FOR.items():
        data = json.dumps(sample_doc(name)).encode()
        assert not isinstance(outcome(channel, data), str), name


def test_fuzz_helpers_reach_every_sample() -> None:
    for name in SAMPLE_FOR:
        assert len(places(sample_doc(name))) >= 5, name


def test_known_names_and_expiries_stay_bounded_and_checked() -> None:
    """Valid products and expiries are remembered, up to a bound; invalid ones never are, so
    they fail every time, and past the bound new ones are still checked."""
    from enricher import fields
    from enricher.records import InvalidMessage

    for _ in range(2):
        for name in ("nifty", "NIFTY ", 21500, None):
            with pytest.raises(InvalidMessage):
                fields.product_name(name)
        with pytest.raises(InvalidMessage):
            fields.expiry_date("2025-1-30")
    assert "nifty" not in fields._KNOWN_PRODUCTS
    assert "2025-1-30" not in fields._KNOWN_EXPIRIES
    try:
        for i in range(fields._KNOWN_MAX + 10):
            assert fields.product_name(f"P{i}") == f"P{i}"
        assert len(fields._KNOWN_PRODUCTS) == fields._KNOWN_MAX
        with pytest.raises(InvalidMessage):
            fields.product_name("lower")
    finally:
        fields._KNOWN_PRODUCTS.clear()
    assert fields.expiry_date("2025-01-30") == fields.expiry_date("2025-01-30") == "2025-01-30"
    with pytest.raises(InvalidMessage, match="in a 2025-02-06 chain"):
        fields.expiry_date("2025-01-30", "2025-02-06")  # remembered, and still compared
