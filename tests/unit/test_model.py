from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enricher.analytics.black76 import black76_greeks, black76_price
from enricher.analytics.expiry import ChainSnapshot, classify_buildup, gex_flip_strike, skew_25
from enricher.analytics.model import (
    ModelConfig,
    for_pool,
    model_chain,
    model_chains,
    model_quotes,
    quote_ivs,
    time_to_expiry,
)
from enricher.feed.pricing import smile_vol, year_fraction
from enricher.feed.synthetic import PRODUCTS, SyntheticFeed, expiry_instant
from enricher.messages import parse
from enricher.records import OPTION_QUOTE, Chain, Quote

NAN = math.nan
NOW = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)  # a Monday; NSE closes at 10:00 UTC
EXPIRY = "2025-01-23"
CONFIG = ModelConfig()
NSE = ("NIFTY", "BANKNIFTY", "FINNIFTY", "SENSEX")

# Big generated inputs: on a loaded machine hypothesis would call their generation too slow.
SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]


def make_chain(
    strikes: Sequence[float],
    *,
    spot: float,
    call_last: Sequence[float] | None = None,
    put_last: Sequence[float] | None = None,
    call_book: Sequence[tuple[float, float]] | None = None,
    put_book: Sequence[tuple[float, float]] | None = None,
    call_oi: Sequence[float] | None = None,
    put_oi: Sequence[float] | None = None,
    timestamp: datetime = NOW,
    expiry: str = EXPIRY,
    product: str = "NIFTY",
) -> Chain:
    n = len(strikes)

    def column(values: Sequence[float] | None, default: float = NAN) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.array([default] * n if values is None else values, dtype=np.float64)

    def rows(book: Sequence[tuple[float, float]] | None) -> list[dict[str, Any]]:
        return (
            [] if book is None else [{"strike": k, "bid": b, "ask": a} for k, (b, a) in zip(strikes, book, strict=True)]
        )

    return Chain(
        product=product,
        expiry=expiry,
        spot_price=spot,
        timestamp=timestamp,
        strikes=column(strikes),
        call_oi=column(call_oi, 1000.0),
        put_oi=column(put_oi, 1000.0),
        call_volume=column(None, 0.0),
        put_volume=column(None, 0.0),
        call_last=column(call_last),
        put_last=column(put_last),
        call_iv=column(None),
        put_iv=column(None),
        doc={"calls": rows(call_book), "puts": rows(put_book)},
    )


def priced_chain(
    strikes: Sequence[float], *, forward: float = 100.0, vol: float = 0.2, r: float = 0.0, **kwargs: Any
) -> Chain:
    """A chain whose books are exact Black-76 prices (bid = ask), so every IV is `vol`."""
    years = time_to_expiry(kwargs.get("product", "NIFTY"), kwargs.get("expiry", EXPIRY), NOW, CONFIG)
    k = np.array(strikes, dtype=np.float64)
    calls, puts = (black76_price(forward, k, years, vol, is_call, r=r).tolist() for is_call in (True, False))
    kwargs.setdefault("spot", forward)
    return make_chain(strikes, call_book=[(c, c) for c in calls], put_book=[(p, p) for p in puts], **kwargs)


def assert_plain(value: object) -> None:
    """JSON types only (no numpy scalars), and no NaN or inf anywhere."""
    if type(value) is float:
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in (str, int, bool), repr(value)


def assert_model_plain(chain: Chain, config: ModelConfig = CONFIG, previous: ChainSnapshot | None = None) -> None:
    model, _ = model_chain(chain, config, previous)
    for part in (model.to_json(), model.call_models(), model.put_models()):
        assert_plain(part)
        orjson.dumps(part)
    assert len(model.call_models()) == len(model.put_models()) == chain.strikes.size


# (1) The feed's smile comes back.


def feed_chains(strikes: int, seed: int = 5) -> list[tuple[SyntheticFeed, Chain]]:
    feed = SyntheticFeed(seed=seed, start=NOW, step=timedelta(seconds=1))
    out = []
    for product in feed.products:
        for _ in range(50):  # walk spot off the strike grid
            feed.tick(product)
        [(channel, payload)] = feed.chain(product, strikes=strikes)
        chain = parse(channel, payload, feed_tz=UTC)
        assert isinstance(chain, Chain)
        out.append((feed, chain))
    return out


def true_25_delta_iv(feed: SyntheticFeed, product: str, years: float, target: float) -> float:
    """The smile's IV where N(d1) = target, by bisection in log strike."""
    smile, forward = feed.smile(product), feed.spot(product)

    def call_delta(log_k: float) -> float:
        strike = forward * math.exp(log_k)
        s = smile_vol(smile, forward, strike, years) * math.sqrt(years)
        return 0.5 * math.erfc(-(-log_k + 0.5 * s * s) / s / math.sqrt(2.0))

    low, high = -1.0, 1.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if call_delta(mid) > target else (low, mid)
    return smile_vol(smile, forward, forward * math.exp(low), years)


@pytest.mark.parametrize("strikes", [21, 200])
def test_recovers_the_feeds_smile_forward_and_time(strikes: int) -> None:
    chains = feed_chains(strikes)
    for (feed, chain), (model, _) in zip(chains, model_chains([(c, None) for _, c in chains], CONFIG), strict=True):
        product, spec = chain.product, PRODUCTS[chain.product]
        out = model.to_json()
        years = year_fraction(chain.timestamp, expiry_instant(spec, chain.expiry))
        assert out["time_to_expiry_years"] == pytest.approx(years, rel=1e-12)
        assert out["forward_source"] == "parity"
        assert abs(out["forward"] - feed.spot(product)) <= spec.strike_step  # r = 0: F = spot
        smile = feed.smile(product)
        calls, puts = model.call_models(), model.put_models()
        for i, strike in enumerate(chain.strikes.tolist()):
            side = puts if strike < out["forward"] else calls
            iv, vega = side[i]["iv"], side[i]["vega"]
            if iv is None:
                continue
            assert vega is not None
            error = abs(iv - smile_vol(smile, feed.spot(product), strike, years))
            # Within the quote's rounding: the IV error, in price, is under one tick.
            assert error * vega * 100.0 <= spec.tick, (product, strike, error)
            if product in NSE and strikes == 21:
                assert error <= 2e-4  # every strike, near the money
        if product in NSE and strikes == 21:
            assert out["smile"]["strikes"] == chain.strikes.tolist()
        assert out["atm_iv"] == pytest.approx(smile.atm, abs=1e-3)
        assert out["skew_status"] == "ok"
        rr = true_25_delta_iv(feed, product, years, 0.25) - true_25_delta_iv(feed, product, years, 0.75)
        # Linear in delta between strikes: US strikes are ~1 sd apart on a weekly, NSE ones ~0.15.
        assert out["rr25"] == pytest.approx(rr, abs=5e-4 if product in NSE else 5e-3)
        assert out["expected_move_straddle"] / out["expected_move_iv"] == pytest.approx(
            math.sqrt(2 / math.pi), abs=0.02
        )


def test_quotes_recover_the_smile_and_match_the_chain() -> None:
    feed = SyntheticFeed(seed=9, start=NOW, step=timedelta(seconds=1))
    quotes = []
    for product in NSE:
        for channel, payload in feed.quotes(product, 5):
            quote = parse(channel, payload, feed_tz=UTC)
            assert channel == OPTION_QUOTE
            assert isinstance(quote, Quote)
            quotes.append(quote)
    models = model_quotes(quotes, [feed.spot(q.product) for q in quotes], CONFIG)
    for quote, model in zip(quotes, models, strict=True):
        years = year_fraction(quote.timestamp, expiry_instant(PRODUCTS[quote.product], quote.expiry))
        truth = smile_vol(feed.smile(quote.product), feed.spot(quote.product), quote.strike, years)
        assert model["status"] == "ok"
        assert abs(model["iv"] - truth) * model["vega"] * 100 <= PRODUCTS[quote.product].tick
    assert model_quotes(quotes[:1], [None], CONFIG)[0]["status"] == "no_forward"
    with pytest.raises(ValueError, match="forwards"):
        model_quotes(quotes, [], CONFIG)


def test_batch_equals_one_by_one_and_the_pool_round_trip() -> None:
    chains = [chain for _, chain in feed_chains(21, seed=2)]
    batch = model_chains([(c, None) for c in chains], CONFIG)
    # What the pool gets and gives back: smaller copies, the same answers.
    pooled = pickle.loads(pickle.dumps(model_chains([(for_pool(c), None) for c in chains], CONFIG)))
    assert len(pickle.dumps(for_pool(chains[0]))) < len(pickle.dumps(chains[0])) / 3
    for chain, (model, snapshot), (back, back_snapshot) in zip(chains, batch, pooled, strict=True):
        alone, alone_snapshot = model_chain(chain, CONFIG, None)
        for other in (alone, back):
            assert other.to_json() == model.to_json()
            assert other.call_models() == model.call_models()
            assert other.put_models() == model.put_models()
        for other_snapshot in (alone_snapshot, back_snapshot):
            assert np.array_equal(other_snapshot.put_price, snapshot.put_price, equal_nan=True)
    for thing in (chains[0], batch[0][1], CONFIG):
        pickle.loads(pickle.dumps(thing))


# (2) Forward by put-call parity.


def test_forward_is_the_parity_median_near_spot() -> None:
    strikes = [90.0 + 2.5 * i for i in range(9)]  # 90 .. 110
    config = ModelConfig(r=0.05)
    chain = priced_chain(strikes, forward=101.3, r=0.05, spot=100.0, expiry="2025-02-20")
    model, _ = model_chain(chain, config, None)
    assert model.forward_source == "parity"
    assert model.forward == pytest.approx(101.3, rel=1e-12)
    assert model.to_json()["smile"]["ivs"] == pytest.approx([0.2] * 9, abs=1e-9)

    # A stale pair at one of the three strikes nearest spot: the median ignores it.
    book = list(chain.doc["calls"])
    book[4] = {"strike": 100.0, "bid": 0.0, "ask": 0.0}
    stale = make_chain(
        strikes,
        spot=100.0,
        call_book=[(row["bid"], row["ask"]) for row in book],
        put_book=[(row["bid"], row["ask"]) for row in chain.doc["puts"]],
        call_last=[50.0 if k == 100.0 else NAN for k in strikes],
        expiry="2025-02-20",
    )
    assert model_chain(stale, config, None)[0].forward == pytest.approx(101.3, rel=1e-12)


def test_forward_falls_back_to_spot_without_a_pair() -> None:
    chain = make_chain([95.0, 100.0, 105.0], spot=100.5, call_last=[6.0, NAN, NAN], put_last=[NAN, 2.0, 4.0])
    model, _ = model_chain(chain, CONFIG, None)
    assert (model.forward, model.forward_source) == (100.5, "spot")


# (3) Statuses, and never a NaN.


def test_price_used_and_statuses() -> None:
    years = time_to_expiry("NIFTY", EXPIRY, NOW, CONFIG)
    fair = float(black76_price(100.0, [100.0], years, 0.2, True)[0])  # all-scalar input is unsupported
    chain = make_chain(
        [60.0, 80.0, 100.0, 101.0, 102.0, 103.0, 150.0],
        spot=100.0,
        call_book=[(0.0, 0.0), (0.0, 0.0), (fair, fair), (0.0, 5.0), (3.0, 2.0), (1.0, 9.0), (0.0, 0.0)],
        call_last=[39.0, 120.0, NAN, 1.5, 1.4, 1.3, NAN],
        put_last=[NAN, NAN, fair, NAN, NAN, NAN, NAN],
    )
    model, _ = model_chain(chain, CONFIG, None)
    calls = model.call_models()
    assert [c["price_used"] for c in calls] == ["last", "last", "mid", "last", "last", "last", "none"]
    assert [c["status"] for c in calls] == [
        "below_intrinsic",  # 39 < 40 intrinsic
        "above_max",  # 120 > F
        "ok",
        "ok",  # zero bid: the last
        "ok",  # crossed book: the last
        "ok",  # (9 - 1) / 5 > 0.5: the last
        "no_price",
    ]
    assert calls[2]["iv"] == pytest.approx(0.2, abs=1e-12)
    assert calls[2]["price"] == fair
    assert calls[-1] == dict.fromkeys(("iv", "delta", "gamma", "vega", "theta", "price"), None) | {
        "price_used": "none",
        "status": "no_price",
    }
    assert model.forward == 100.0
    assert model.forward_source == "parity"
    assert_model_plain(chain)


@pytest.mark.parametrize(
    ("timestamp", "expiry"),
    [
        (datetime(2025, 1, 23, 11, 0, tzinfo=UTC), EXPIRY),  # expiry day, after the 15:30 IST close
        (datetime(2025, 1, 23, 10, 0, tzinfo=UTC), EXPIRY),  # exactly at the close: T == 0
        (NOW, "2025-01-16"),  # last week's
    ],
)
def test_expired_chains_have_no_model_and_no_nan(timestamp: datetime, expiry: str) -> None:
    chain = replace(priced_chain([90.0, 100.0, 110.0]), timestamp=timestamp, expiry=expiry)
    model, _ = model_chain(chain, CONFIG, None)
    assert model.time_to_expiry_years is not None
    assert model.time_to_expiry_years <= 0.0
    assert {m["status"] for m in model.call_models() + model.put_models()} == {"expired"}
    assert all(m["iv"] is None and m["delta"] is None for m in model.call_models())
    out = model.to_json()
    assert (out["atm_iv"], out["rr25"], out["skew_status"]) == (None, None, "expired")
    assert (out["expected_move_straddle"], out["expected_move_iv"], out["gex_total"]) == (None, None, None)
    assert out["smile"] == {"strikes": [], "ivs": []}
    assert_model_plain(chain)


def test_one_strike_chain() -> None:
    chain = priced_chain([100.0], forward=100.0)
    model, _ = model_chain(chain, CONFIG, None)
    assert model.atm_iv == pytest.approx(0.2, abs=1e-9)
    assert (model.rr25, model.skew_status) == (None, "both_wings_unreachable")
    assert model.expected_move_straddle is not None
    assert_model_plain(chain)


def test_close_is_the_exchanges_wall_clock() -> None:
    # 16:00 New York is 21:00 UTC in winter and 20:00 UTC in summer; IST has no DST.
    assert time_to_expiry("AAPL", "2025-01-24", datetime(2025, 1, 24, 20, 0, tzinfo=UTC), CONFIG) > 0
    assert time_to_expiry("AAPL", "2025-07-25", datetime(2025, 7, 25, 20, 0, tzinfo=UTC), CONFIG) == 0.0
    assert time_to_expiry("NIFTY", EXPIRY, datetime(2025, 1, 23, 10, 0, tzinfo=UTC), CONFIG) == 0.0
    late = ModelConfig(closes={"NIFTY": (16, 0, "Asia/Kolkata")})
    assert time_to_expiry("NIFTY", EXPIRY, datetime(2025, 1, 23, 10, 0, tzinfo=UTC), late) == pytest.approx(
        1800 / (365 * 86400)
    )
    assert math.isnan(time_to_expiry("NIFTY", "someday", NOW, CONFIG))
    with pytest.raises(ValueError, match="gex_sign"):
        ModelConfig(gex_sign=0)


# (4) Arbitrary input: never a NaN out; IV increases with price.

anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
prices = st.one_of(anything, st.floats(0.0, 200.0))


@st.composite
def arbitrary_chains(draw: st.DrawFn) -> tuple[Chain, ChainSnapshot | None]:
    strikes = sorted(draw(st.sets(st.floats(1.0, 300.0), min_size=1, max_size=12)))
    n = len(strikes)

    def column(values: st.SearchStrategy[float]) -> list[float]:
        return draw(st.lists(values, min_size=n, max_size=n))

    def book() -> list[tuple[float, float]]:
        return list(zip(column(prices), column(prices), strict=True))

    hours = draw(st.floats(-300.0, 24.0 * 400))
    chain = make_chain(
        strikes,
        spot=draw(st.one_of(anything, st.floats(50.0, 150.0))),
        call_last=column(prices),
        put_last=column(prices),
        call_book=book(),
        put_book=book(),
        call_oi=column(st.one_of(anything, st.floats(0.0, 1e6))),
        put_oi=column(st.one_of(anything, st.floats(0.0, 1e6))),
        timestamp=NOW + timedelta(hours=hours),
    )
    previous = None
    if draw(st.booleans()):
        m = draw(st.integers(0, n))
        previous = ChainSnapshot(
            product=chain.product,
            expiry=chain.expiry,
            timestamp=chain.timestamp - timedelta(minutes=1),
            strikes=np.array(strikes[:m]),
            call_oi=np.array(column(anything)[:m]),
            put_oi=np.array(column(anything)[:m]),
            call_price=np.array(column(prices)[:m]),
            put_price=np.array(column(prices)[:m]),
        )
    return chain, previous


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_DATA)
@given(arbitrary_chains(), st.floats(-0.2, 0.2), st.sampled_from([1, -1]))
def test_no_nan_or_inf_ever(item: tuple[Chain, ChainSnapshot | None], r: float, sign: int) -> None:
    chain, previous = item
    assert_model_plain(chain, ModelConfig(r=r, gex_sign=sign), previous)


@settings(max_examples=60, deadline=None, suppress_health_check=SLOW_DATA)
@given(st.lists(arbitrary_chains(), min_size=2, max_size=4), st.floats(-0.2, 0.2))
def test_any_batch_models_each_chain_as_it_would_alone(
    items: list[tuple[Chain, ChainSnapshot | None]], r: float
) -> None:
    # What the pool gets in a batch, the event loop gets one at a time: the same answers, to the bit.
    config = ModelConfig(r=r)
    for (chain, previous), (model, snapshot) in zip(items, model_chains(items, config), strict=True):
        alone, alone_snapshot = model_chain(chain, config, previous)
        assert orjson.dumps(alone.to_json()) == orjson.dumps(model.to_json())
        assert orjson.dumps(alone.call_models()) == orjson.dumps(model.call_models())
        assert orjson.dumps(alone.put_models()) == orjson.dumps(model.put_models())
        assert np.array_equal(alone_snapshot.call_price, snapshot.call_price, equal_nan=True)


def aapl_quote(strike: float, is_call: bool, bid: float, ask: float, last: float, hours: float) -> Quote:
    """An AAPL quote `hours` before its expiry's close (negative: after it)."""
    return Quote(
        symbol="X",
        product="AAPL",
        expiry="2025-09-19",
        strike=strike,
        option_type="CALL" if is_call else "PUT",
        bid=bid,
        ask=ask,
        last=last,
        volume=0,
        open_interest=0,
        iv=None,
        timestamp=datetime(2025, 9, 19, 20, 0, tzinfo=UTC) - timedelta(hours=hours),
        doc={},
    )


@settings(max_examples=100, deadline=None)
@given(
    st.floats(50.0, 150.0),
    st.floats(0.001, 100.0),
    st.floats(0.001, 100.0),
    st.booleans(),
    st.floats(1.0, 24.0 * 200),
)
def test_iv_increases_with_price(strike: float, p1: float, p2: float, is_call: bool, hours: float) -> None:
    quotes = [aapl_quote(strike, is_call, 0.0, 0.0, price, hours) for price in sorted((p1, p2))]
    low, high = model_quotes(quotes, [100.0, 100.0], CONFIG)
    assert_plain([low, high])
    if low["status"] == high["status"] == "ok":
        assert low["iv"] <= high["iv"]


@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True),  # strike
            st.floats(allow_nan=True, allow_infinity=True),  # bid
            st.floats(allow_nan=True, allow_infinity=True),  # ask
            st.floats(allow_nan=True, allow_infinity=True),  # last
            st.booleans(),
            st.floats(-24.0 * 30, 24.0 * 400),  # hours before expiry; negative: expired
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),  # forward
        ),
        max_size=8,
    )
)
def test_quote_ivs_are_the_models_ivs(rows: list[tuple[float, float, float, float, bool, float, float | None]]) -> None:
    quotes = [aapl_quote(strike, is_call, bid, ask, last, hours) for strike, bid, ask, last, is_call, hours, _ in rows]
    forwards = [forward for *_, forward in rows]
    assert quote_ivs(quotes, forwards, CONFIG) == [model["iv"] for model in model_quotes(quotes, forwards, CONFIG)]


# (5) OI build-up.


@pytest.mark.parametrize(
    ("price_change", "oi_change", "expected"),
    [
        (1.0, 10.0, 1),  # long build-up
        (-1.0, 10.0, 2),  # short build-up
        (1.0, -10.0, 3),  # short covering
        (-1.0, -10.0, 4),  # long unwinding
        (0.0, 10.0, 0),
        (1.0, 0.0, 0),
        (NAN, 10.0, 0),
        (1.0, NAN, 0),
    ],
)
def test_buildup_classification(price_change: float, oi_change: float, expected: int) -> None:
    assert classify_buildup(np.array([price_change]), np.array([oi_change])).tolist() == [expected]


def test_buildup_classification_for_every_sign() -> None:
    values = [1.0, -1.0, 0.0, -0.0, NAN, math.inf, -math.inf]
    price_change, oi_change = np.array(list(itertools.product(values, values))).T
    up, down, more, less = price_change > 0, price_change < 0, oi_change > 0, oi_change < 0
    expected = np.select([up & more, down & more, up & less, down & less], [1, 2, 3, 4], 0)
    codes = classify_buildup(price_change, oi_change)
    assert codes.dtype == np.uint8
    assert codes.tolist() == expected.tolist()


def test_oi_change_against_the_previous_snapshot() -> None:
    first = make_chain(
        [100.0, 105.0, 110.0],
        spot=105.0,
        call_last=[8.0, 5.0, 3.0],
        put_last=[2.0, 4.0, 7.0],
        call_oi=[100, 100, 100],
        put_oi=[100, 100, 100],
    )
    _, kept = model_chain(first, CONFIG, None)
    second = make_chain(
        [105.0, 110.0, 115.0],
        spot=105.0,
        call_last=[6.0, 2.0, 1.0],
        put_last=[3.0, 7.0, 9.0],
        call_oi=[150, 150, 90],
        put_oi=[90, 100, 50],
        timestamp=NOW + timedelta(minutes=1),
    )
    model, snapshot = model_chain(second, CONFIG, kept)
    out = model.to_json()["oi_change"]
    assert out["call"] == [50.0, 50.0, None]
    assert out["put"] == [-10.0, 0.0, None]
    assert out["call_buildup"] == ["long_buildup", "short_buildup", None]
    assert out["put_buildup"] == ["long_unwinding", None, None]
    assert snapshot.timestamp == second.timestamp
    # An older chain arriving late is compared with nothing, and the newer snapshot is kept.
    late, kept_again = model_chain(first, CONFIG, snapshot)
    assert late.to_json()["oi_change"]["call"] == [None] * 3
    assert kept_again is snapshot
    with pytest.raises(ValueError, match="snapshot"):
        model_chain(make_chain([100.0], spot=100.0, product="BANKNIFTY"), CONFIG, snapshot)


# (6) GEX.


def test_gex_signs_totals_and_flip() -> None:
    strikes = [90.0, 100.0, 110.0]
    call_oi, put_oi = [0.0, 1000.0, 5000.0], [5000.0, 1000.0, 0.0]
    chain = priced_chain(strikes, call_oi=call_oi, put_oi=put_oi, expiry="2025-04-17")
    years = time_to_expiry("NIFTY", "2025-04-17", NOW, CONFIG)
    gamma = black76_greeks(100.0, np.array(strikes), years, 0.2, True).gamma
    scale = 75 * 100.0**2 * 0.01  # NIFTY lot, F², per 1 %
    model, _ = model_chain(chain, CONFIG, None)
    gex = model.to_json()["gex"]
    assert gex["strikes"] == strikes
    assert gex["call"] == pytest.approx((scale * gamma * call_oi).tolist(), rel=1e-6)
    assert gex["put"] == pytest.approx((-scale * gamma * np.array(put_oi)).tolist(), rel=1e-6)
    net = scale * gamma * (np.array(call_oi) - put_oi)
    assert model.gex_total == pytest.approx(net.sum(), rel=1e-6)
    assert net[0] < 0 < net[0] + net[1] + net[2]  # puts below, calls above
    assert model.gex_flip_strike == (100.0 if net[0] + net[1] > 0 else 110.0)
    flipped, _ = model_chain(chain, ModelConfig(gex_sign=-1), None)
    assert flipped.gex_total == pytest.approx(-net.sum(), rel=1e-6)
    assert flipped.to_json()["gex"]["call"] == pytest.approx((-scale * gamma * call_oi).tolist(), rel=1e-6)


@pytest.mark.parametrize(
    ("net", "flip"),
    [
        ([-5.0, 2.0, 4.0], 3.0),
        ([-5.0, 6.0, -4.0], 2.0),
        ([0.0, 0.0, 3.0, -5.0], 4.0),
        ([1.0, 2.0, 3.0], None),
        ([NAN, -1.0, 3.0], 3.0),
        ([0.0, 0.0], None),
    ],
)
def test_gex_flip_strike(net: list[float], flip: float | None) -> None:
    strikes = np.arange(1.0, len(net) + 1.0)
    assert gex_flip_strike(strikes, np.array(net)) == flip


# (7) 25-delta wings the strikes do not reach.


@pytest.mark.parametrize(
    ("strikes", "status"),
    [
        ([99.0, 100.0, 101.0], "both_wings_unreachable"),
        ([98.0 + 2.0 * i for i in range(17)], "put_wing_unreachable"),  # 98 .. 130
        ([70.0 + 2.0 * i for i in range(17)], "call_wing_unreachable"),  # 70 .. 102
        ([70.0 + 2.0 * i for i in range(31)], "ok"),  # 70 .. 130
    ],
)
def test_unreachable_25_delta_wings(strikes: list[float], status: str) -> None:
    model, _ = model_chain(priced_chain(strikes, expiry="2025-02-19"), CONFIG, None)
    assert model.skew_status == status
    if status == "ok":  # a flat smile: no risk reversal, no butterfly
        assert model.rr25 == pytest.approx(0.0, abs=1e-9)
        assert model.bf25 == pytest.approx(0.0, abs=1e-9)
    else:
        assert (model.rr25, model.bf25) == (None, None)


def test_skew_interpolates_in_delta() -> None:
    smile = np.array([0.30, 0.25, 0.20, 0.22])
    deltas = np.array([0.9, 0.7, 0.5, 0.1])  # N(d1), falling with strike
    rr, bf, status = skew_25(smile, deltas, 0.20)
    put = 0.25 + (0.30 - 0.25) * (0.75 - 0.7) / (0.9 - 0.7)  # between N(d1) 0.7 and 0.9
    call = 0.22 + (0.20 - 0.22) * (0.25 - 0.1) / (0.5 - 0.1)  # between 0.1 and 0.5
    assert status == "ok"
    assert rr == pytest.approx(call - put)
    assert bf == pytest.approx((call + put) / 2 - 0.20)
    assert skew_25(smile, deltas, None)[1] is None
