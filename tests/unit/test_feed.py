"""The synthetic feed: payload shapes, identities, load mix, and prices consistent with its smile."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis
from vollib.black import black
from vollib.black.greeks import analytical

from enricher.feed.pricing import (
    DEFAULT_SMILES,
    MIN_VOL,
    Smile,
    bid_ask_last,
    black76_greeks,
    black76_price,
    smile_vol,
    year_fraction,
)
from enricher.feed.publisher import publish_burst, publish_paced
from enricher.feed.synthetic import (
    PRODUCTS,
    Message,
    SyntheticFeed,
    expiry_instant,
    next_expiries,
)
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING

START = datetime(2025, 1, 20, 10, 15, 30, tzinfo=UTC)  # a Monday
REPO = Path(__file__).resolve().parents[2]
SAMPLES = next(
    (p for p in (REPO / "tests" / "samples", REPO.parent / "shared" / "samples") if p.is_dir()),
    REPO / "tests" / "samples",
)
SYMBOL = re.compile(r"^(?P<product>[A-Z]+)(?P<ymd>\d{8})(?P<cp>[CP])(?P<strike>\d+)$")


def sample(name: str) -> dict[str, Any]:
    path = SAMPLES / f"synthetic_{name}.json"
    if not path.exists():
        pytest.skip(f"sample {path} not found")
    return cast(dict[str, Any], orjson.loads(path.read_bytes()))


def make_feed(**kwargs: Any) -> SyntheticFeed:
    kwargs.setdefault("start", START)
    return SyntheticFeed(seed=7, **kwargs)


def payloads(messages: list[Message], channel: str) -> list[dict[str, Any]]:
    return [orjson.loads(body) for ch, body in messages if ch == channel]


def chain_of(feed: SyntheticFeed, product: str, **kwargs: Any) -> dict[str, Any]:
    [(channel, body)] = feed.chain(product, **kwargs)
    assert channel == OPTION_CHAIN
    return cast(dict[str, Any], orjson.loads(body))


def years_to(product: str, row: dict[str, Any]) -> float:
    """Time to expiry as the feed defines it, from a row's naive UTC timestamp."""
    at = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=UTC)
    return year_fraction(at, expiry_instant(PRODUCTS[product], row["expiry"]))


# -- shapes and identities -------------------------------------------------------------


def test_payloads_have_exactly_the_samples_fields_in_order() -> None:
    feed = make_feed()
    [tick] = payloads(feed.tick("NIFTY"), UNDERLYING)
    quote = payloads(feed.quotes("NIFTY", 1), OPTION_QUOTE)[0]
    chain = chain_of(feed, "NIFTY")
    expected_chain = sample("option_chain")
    assert list(tick) == list(sample("underlying"))
    assert list(quote) == list(sample("option_quote"))
    assert list(chain) == list(expected_chain)
    for side in ("calls", "puts"):
        assert all(list(row) == list(expected_chain[side][0]) for row in chain[side])
    assert all(isinstance(k, float) for k in chain["strikes"])
    assert isinstance(quote["strike"], float)
    assert isinstance(quote["volume"], int)
    assert isinstance(quote["open_interest"], int)
    assert tick["type"] == "UNDERLYING"


def test_symbols_spell_product_expiry_type_and_strike() -> None:
    chain = chain_of(make_feed(), "BANKNIFTY")
    for row in chain["calls"] + chain["puts"]:
        match = SYMBOL.match(row["symbol"])
        assert match is not None
        assert match["product"] == row["product"] == "BANKNIFTY"
        assert match["ymd"] == row["expiry"].replace("-", "")
        assert match["cp"] == row["option_type"][0]
        assert int(match["strike"]) == int(row["strike"])


def test_tick_id_is_one_counter_across_products_and_restarts_at_zero() -> None:
    feed = make_feed()
    first = [t["tick_id"] for t in payloads(feed.loop(), UNDERLYING)]
    second = [t["tick_id"] for t in payloads(feed.loop(), UNDERLYING)]
    feed.restart()
    after = payloads(feed.loop(), UNDERLYING)
    assert first == list(range(8))
    assert second == list(range(8, 16))
    assert [t["tick_id"] for t in after] == list(range(8))
    assert [t["product"] for t in after] == list(PRODUCTS)


def _stamps(messages: list[Message]) -> list[str]:
    return [orjson.loads(body)["timestamp"] for _, body in messages]


def test_timestamps_strictly_increase_even_with_a_stopped_clock() -> None:
    feed = SyntheticFeed(clock=lambda: START)
    stamps = [datetime.fromisoformat(s) for s in _stamps(feed.loop() + feed.loop())]
    assert all(b - a == timedelta(microseconds=1) for a, b in pairwise(stamps))
    assert stamps[0] == START.replace(tzinfo=None)


def test_burst_timestamps_increase_in_the_order_sent() -> None:
    feed = SyntheticFeed(clock=lambda: START)
    stamps = _stamps(list(feed.burst(ticks=7, quotes=43, chains=2, strikes=3)))
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_virtual_clock_steps_per_message_and_stamps_naive_local_time() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    feed = make_feed(step=timedelta(milliseconds=250), tz=ist)
    stamps = _stamps(feed.tick("NIFTY") + feed.tick("NIFTY"))
    assert stamps == ["2025-01-20T15:45:30.000000", "2025-01-20T15:45:30.250000"]


def test_feed_rejects_an_ambiguous_or_naive_clock() -> None:
    with pytest.raises(ValueError, match="either"):
        SyntheticFeed(clock=lambda: START, start=START)
    with pytest.raises(ValueError, match="aware"):
        SyntheticFeed(start=START.replace(tzinfo=None))
    with pytest.raises(ValueError, match="aware"):
        SyntheticFeed(clock=lambda: START.replace(tzinfo=None)).tick("NIFTY")
    with pytest.raises(ValueError, match="unknown"):
        SyntheticFeed(products=["NIFTY", "DOGE"])


def test_same_seed_and_clock_give_the_same_messages() -> None:
    assert make_feed().loop() + make_feed().loop() == make_feed().loop() + make_feed().loop()
    assert make_feed().loop() != SyntheticFeed(seed=8, start=START).loop()


# -- calendar and load -----------------------------------------------------------------


def test_expiries_are_the_next_two_weeklies_strictly_after_the_event_date() -> None:
    thursday = datetime(2025, 1, 23, 9, 0, tzinfo=UTC)
    assert next_expiries(PRODUCTS["NIFTY"], START) == ("2025-01-23", "2025-01-30")
    assert next_expiries(PRODUCTS["NIFTY"], thursday) == ("2025-01-30", "2025-02-06")
    assert next_expiries(PRODUCTS["SPY"], thursday) == ("2025-01-24", "2025-01-31")


def test_chains_alternate_between_the_two_expiries() -> None:
    feed = make_feed()
    expiries = [chain_of(feed, "SPY")["expiry"] for _ in range(3)]
    assert expiries == ["2025-01-24", "2025-01-31", "2025-01-24"]
    assert chain_of(feed, "SPY", expiry="2025-03-21")["expiry"] == "2025-03-21"


def test_loop_sends_the_contract_load() -> None:
    feed = make_feed()
    loops = [feed.loop() for _ in range(10)]
    per_loop = [Counter(ch for ch, _ in loop) for loop in loops]
    assert all(c[UNDERLYING] == 8 and c[OPTION_QUOTE] == 48 for c in per_loop)
    assert [c[OPTION_CHAIN] for c in per_loop] == [0, 0, 0, 0, 8, 0, 0, 0, 0, 8]
    quotes = payloads(loops[0], OPTION_QUOTE)
    for product in PRODUCTS:
        mine = [q for q in quotes if q["product"] == product]
        strikes = Counter((q["strike"], q["expiry"]) for q in mine)
        assert len(strikes) == 3
        assert set(strikes.values()) == {2}


def test_burst_has_exact_counts_the_mix_throughout_and_round_robin_products() -> None:
    messages = list(make_feed().burst(ticks=80, quotes=480, chains=16))
    assert Counter(ch for ch, _ in messages) == {UNDERLYING: 80, OPTION_QUOTE: 480, OPTION_CHAIN: 16}
    first = Counter(ch for ch, _ in messages[:144])  # a quarter of the burst
    assert first == {UNDERLYING: 20, OPTION_QUOTE: 120, OPTION_CHAIN: 4}
    assert [t["product"] for t in payloads(messages, UNDERLYING)][:9] == [*PRODUCTS, "NIFTY"]
    assert [c["product"] for c in payloads(messages, OPTION_CHAIN)][:8] == list(PRODUCTS)
    assert list(make_feed().burst(0, 0, 0)) == []


@pytest.mark.parametrize(("product", "strikes"), [("NIFTY", 21), ("NIFTY", 200), ("AAPL", 200)])
def test_chain_strikes_are_consecutive_around_spot_and_positive(product: str, strikes: int) -> None:
    feed = make_feed()
    chain = chain_of(feed, product, strikes=strikes)
    grid = chain["strikes"]
    step = PRODUCTS[product].strike_step
    assert len(grid) == len(chain["calls"]) == len(chain["puts"]) == strikes
    assert all(b - a == step for a, b in pairwise(grid))
    assert grid[0] > 0
    assert [r["strike"] for r in chain["calls"]] == [r["strike"] for r in chain["puts"]] == grid
    assert chain["spot_price"] == feed.spot(product)
    if grid[0] > step:  # not shifted up to stay positive
        atm = min(grid, key=lambda k: abs(k - chain["spot_price"]))
        assert grid.index(atm) == strikes // 2


# -- prices ------------------------------------------------------------------------------


def _all_rows(feed: SyntheticFeed, strikes: int = 41) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for product in PRODUCTS:
        feed.tick(product)
        for _ in range(2):
            chain = chain_of(feed, product, strikes=strikes)
            rows += chain["calls"] + chain["puts"]
    return rows


@pytest.mark.parametrize("rate", [0.0, 0.06])
def test_quotes_are_on_the_tick_grid_and_ordered(rate: float) -> None:
    for row in _all_rows(make_feed(interest_rate=rate)):
        tick = PRODUCTS[row["product"]].tick
        assert 0 <= row["bid"] <= row["last"] <= row["ask"]
        assert row["bid"] < row["ask"] or row["last"] == 0
        assert (row["bid"] + row["ask"]) / 2 == pytest.approx(row["last"], abs=1e-9)
        for field in ("bid", "ask", "last"):
            assert row[field] / tick == pytest.approx(round(row[field] / tick), abs=1e-6)


@pytest.mark.parametrize("rate", [0.0, 0.06])
def test_put_call_parity_holds_within_two_ticks(rate: float) -> None:
    feed = make_feed(interest_rate=rate)
    for product in PRODUCTS:
        chain = chain_of(feed, product, strikes=41)
        tick = PRODUCTS[product].tick
        for call, put in zip(chain["calls"], chain["puts"], strict=True):
            years = years_to(product, call)
            forward = chain["spot_price"] * math.exp(rate * years)
            parity = (forward - call["strike"]) * math.exp(-rate * years)
            assert call["last"] - put["last"] == pytest.approx(parity, abs=2 * tick)


@pytest.mark.parametrize("rate", [0.0, 0.06])
def test_rows_are_priced_from_the_smile_and_carry_its_greeks(rate: float) -> None:
    feed = make_feed(interest_rate=rate)
    for row in _all_rows(feed, strikes=21):
        product, strike, flag = row["product"], row["strike"], row["option_type"][0].lower()
        years = years_to(product, row)
        forward = feed.spot(product) * math.exp(rate * years)
        vol = row["iv"]
        assert vol == pytest.approx(smile_vol(feed.smile(product), forward, strike, years), abs=5e-7)
        mid = black(flag, forward, strike, years, rate, vol)
        assert row["last"] == pytest.approx(mid, abs=PRODUCTS[product].tick / 2 + 1e-9)
        args = (flag, forward, strike, years, rate, vol)
        assert row["delta"] == pytest.approx(analytical.delta(*args), abs=5e-5)
        assert row["gamma"] == pytest.approx(analytical.gamma(*args), abs=5e-9)
        assert row["vega"] == pytest.approx(analytical.vega(*args), abs=5e-5)
        assert row["theta"] == pytest.approx(analytical.theta(*args), abs=5e-5)


PRICING_CASES = [
    (forward, forward * moneyness, years, sigma, rate)
    for forward in (190.0, 21500.0)
    for moneyness in (0.8, 0.97, 1.0, 1.03, 1.25)
    for years in (0.002, 0.02, 0.5)
    for sigma in (0.05, 0.2, 0.8)
    for rate in (0.0, 0.065)
]


def test_black76_matches_vollib() -> None:
    checked = 0
    for forward, strike, years, sigma, rate in PRICING_CASES:
        for is_call in (True, False):
            flag = "c" if is_call else "p"
            expected = black(flag, forward, strike, years, rate, sigma)
            if expected < 1e-12 * forward:  # below any tick; relative error there is meaningless
                continue
            mine = black76_price(forward, strike, years, sigma, is_call, r=rate)
            assert mine == pytest.approx(expected, rel=1e-10)
            greeks = black76_greeks(forward, strike, years, sigma, is_call, r=rate)
            args = (flag, forward, strike, years, rate, sigma)
            assert greeks.delta == pytest.approx(analytical.delta(*args), rel=1e-9)
            assert greeks.gamma == pytest.approx(analytical.gamma(*args), rel=1e-9)
            assert greeks.vega == pytest.approx(analytical.vega(*args), rel=1e-9)
            assert greeks.theta == pytest.approx(analytical.theta(*args), rel=1e-9)
            checked += 1
    assert checked > 300


def test_black76_at_expiry_is_discounted_intrinsic() -> None:
    assert black76_price(110.0, 100.0, 0.0, 0.2, True) == 10.0
    assert black76_price(110.0, 100.0, 0.0, 0.2, False) == 0.0
    assert black76_greeks(90.0, 100.0, 0.0, 0.2, False).delta == -1.0


def test_smile_shape_floor_and_wings() -> None:
    index = DEFAULT_SMILES["NIFTY"]
    assert set(DEFAULT_SMILES) == set(PRODUCTS)
    assert all(DEFAULT_SMILES[p].skew < 0 for p in ("NIFTY", "BANKNIFTY", "FINNIFTY", "SENSEX", "SPY", "QQQ"))
    assert smile_vol(index, 100.0, 100.0, 0.1) == index.atm
    assert smile_vol(index, 100.0, 95.0, 0.1) > index.atm  # put skew
    k = 0.05  # ln(K/F) / sqrt(T)
    expected = index.atm + index.skew * k + index.curvature * k * k
    assert smile_vol(index, 100.0, 100.0 * math.exp(k * math.sqrt(0.25)), 0.25) == pytest.approx(expected)
    assert smile_vol(index, 100.0, 1.0, 0.01) == smile_vol(index, 100.0, 50.0, 0.01)  # flat past the wing
    assert smile_vol(Smile(atm=0.001, skew=0.0, curvature=0.0, wing=1.0), 100.0, 100.0, 0.1) == MIN_VOL


def test_bid_ask_never_goes_negative() -> None:
    assert bid_ask_last(0.0, 0.05, 0.01) == (0.0, 0.0, 0.0)
    assert bid_ask_last(0.04, 0.05, 0.01) == (0.0, 0.1, 0.05)
    assert bid_ask_last(200.0, 0.05, 0.01) == (199.0, 201.0, 200.0)


def test_feed_spot_walks_and_is_what_ticks_report() -> None:
    feed = make_feed()
    prices = [payloads(feed.tick("AAPL"), UNDERLYING)[0]["price"] for _ in range(300)]
    assert prices[-1] == feed.spot("AAPL")
    assert len(set(prices)) > 10
    assert all(abs(p / 190.0 - 1) < 0.02 for p in prices)
    assert date.fromisoformat(next_expiries(PRODUCTS["AAPL"], START)[0]).weekday() == 4


# -- publisher, against a stand-in for redis.asyncio ------------------------------------


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._queued: list[tuple[str, bytes]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queued = []

    def publish(self, channel: str, payload: bytes) -> FakePipeline:
        self._queued.append((channel, payload))
        return self

    async def execute(self) -> list[int]:
        self._redis.round_trips.append(len(self._queued))
        self._redis.published += self._queued
        done, self._queued = self._queued, []
        return [0] * len(done)


class FakeRedis:
    def __init__(self) -> None:
        self.round_trips: list[int] = []
        self.published: list[tuple[str, bytes]] = []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert not transaction
        return FakePipeline(self)


async def test_publish_burst_pipelines_and_counts() -> None:
    redis = FakeRedis()
    messages = list(make_feed().burst(ticks=100, quotes=600, chains=20, strikes=5))
    counts = await publish_burst(cast(Redis, redis), messages, pipeline_size=300)
    assert counts == {UNDERLYING: 100, OPTION_QUOTE: 600, OPTION_CHAIN: 20}
    assert redis.round_trips == [300, 300, 120]
    assert redis.published == messages


async def test_publish_paced_publishes_one_loop_per_period_until_duration() -> None:
    redis = FakeRedis()
    counts = await publish_paced(cast(Redis, redis), make_feed(), rate=50.0, duration=0.1)
    assert 2 <= len(redis.round_trips) <= 6  # 5 on schedule; slack for a loaded machine
    assert set(redis.round_trips) <= {56, 64}
    assert counts[UNDERLYING] == 8 * len(redis.round_trips)


async def test_publish_paced_ends_promptly_on_stop() -> None:
    redis = FakeRedis()
    stop = asyncio.Event()
    task = asyncio.create_task(publish_paced(cast(Redis, redis), make_feed(), rate=0.1, stop=stop))
    await asyncio.sleep(0.02)
    stop.set()
    counts = await asyncio.wait_for(task, 1.0)
    assert counts == {UNDERLYING: 8, OPTION_QUOTE: 48}
