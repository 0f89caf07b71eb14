"""The built-in synthetic DeltaStream feed: ticks, quotes and chains priced from a known smile.

It emits exactly the synthetic provider's payloads (CONTRACT §1), with two differences
that make it usable as ground truth: every option is priced with Black-76 at the
product's smile (`pricing.py`), and it is deterministic for a given seed and clock.

Times: each message gets its own event instant, strictly later than the previous
message's, and is stamped as a naive ISO string in the feed's timezone. Time to
expiry is ACT/365 from that instant to the expiry date at the product's close
(`expiry_instant`); an enricher that wants to recover the smile must use the same.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import partial
from types import MappingProxyType
from typing import Any, Final

import orjson

from enricher.feed.pricing import (
    DEFAULT_SMILES,
    SECONDS_PER_YEAR,
    Smile,
    bid_ask_last,
    black76_greeks,
    black76_price,
    round_to_tick,
    smile_vol,
    year_fraction,
)
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING

Message = tuple[str, bytes]  # (channel, orjson payload)

THURSDAY: Final = 3
FRIDAY: Final = 4
NSE_CLOSE_UTC: Final = time(10, 0)  # 15:30 IST; India has no DST
US_CLOSE_UTC: Final = time(21, 0)  # 16:00 New York standard time; DST ignored, as the feed is synthetic

QUOTE_STRIKES: Final = 21  # quotes pick their strikes among this many around spot
QUOTE_STRIKES_PER_LOOP: Final = 3  # each one a call and a put
CHAIN_EVERY: Final = 5  # loops
TICK_SECONDS: Final = 1.0  # the GBM step of one tick: one feed loop
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Product:
    name: str
    spot: float  # at start
    strike_step: float
    tick: float
    expiry_weekday: int  # Monday = 0
    close_utc: time  # time of day, UTC, at which an expiry date expires


PRODUCTS: Final[Mapping[str, Product]] = MappingProxyType(
    {
        p.name: p
        for p in (
            Product("NIFTY", 21500.0, 50.0, 0.05, THURSDAY, NSE_CLOSE_UTC),
            Product("BANKNIFTY", 46000.0, 100.0, 0.05, THURSDAY, NSE_CLOSE_UTC),
            Product("FINNIFTY", 20500.0, 50.0, 0.05, THURSDAY, NSE_CLOSE_UTC),
            Product("SENSEX", 71000.0, 100.0, 0.05, THURSDAY, NSE_CLOSE_UTC),
            Product("AAPL", 190.0, 5.0, 0.01, FRIDAY, US_CLOSE_UTC),
            Product("TSLA", 240.0, 5.0, 0.01, FRIDAY, US_CLOSE_UTC),
            Product("SPY", 470.0, 5.0, 0.01, FRIDAY, US_CLOSE_UTC),
            Product("QQQ", 400.0, 5.0, 0.01, FRIDAY, US_CLOSE_UTC),
        )
    }
)


def option_symbol(product: str, expiry: str, is_call: bool, strike: float) -> str:
    return f"{product}{expiry.replace('-', '')}{'C' if is_call else 'P'}{int(strike)}"


def next_expiries(product: Product, at: datetime, count: int = 2) -> tuple[str, ...]:
    """The next `count` weekly expiries strictly after the UTC date of `at`.

    Strictly after, so time to expiry is never less than the close's hour of day (10 h
    for NSE): a same-day expiry would have prices of a tick or two and no usable IV.
    """
    day = at.astimezone(UTC).date()
    first = day + timedelta(days=(product.expiry_weekday - day.weekday() - 1) % 7 + 1)
    return tuple((first + timedelta(weeks=i)).isoformat() for i in range(count))


def expiry_instant(product: Product, expiry: str) -> datetime:
    return datetime.combine(date.fromisoformat(expiry), product.close_utc, tzinfo=UTC)


def strike_grid(spot: float, step: float, count: int) -> list[float]:
    """`count` strikes centred on the one nearest `spot`, shifted up to stay above zero."""
    low = max(1, round(spot / step) - count // 2)
    return [float(round((low + i) * step, 8)) for i in range(count)]


class SyntheticFeed:
    """A deterministic generator of synthetic-provider messages for the eight products.

    The clock is `clock()` (aware; default real time), or, when `start` is given, a
    virtual clock that begins at `start` and advances `step` per message. Options are
    priced on the forward spot * e^{interest_rate * T}; `spread` is the full bid-ask
    spread as a fraction of the price. `smile()` and `spot()` expose the truth.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        tz: tzinfo = UTC,
        clock: Callable[[], datetime] | None = None,
        start: datetime | None = None,
        step: timedelta = timedelta(milliseconds=1),
        interest_rate: float = 0.0,
        spread: float = 0.01,
        products: Iterable[str] = PRODUCTS,
        smiles: Mapping[str, Smile] = DEFAULT_SMILES,
    ) -> None:
        if clock is not None and start is not None:
            raise ValueError("give either a clock or a virtual start, not both")
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be an aware datetime")
        if step <= timedelta(0):
            raise ValueError("step must be positive")
        names = tuple(products)
        unknown = set(names) - PRODUCTS.keys()
        if unknown:
            raise ValueError(f"unknown products: {sorted(unknown)}")
        self._specs = {name: PRODUCTS[name] for name in names}
        self._smiles = {name: smiles[name] for name in self._specs}
        self._rng = random.Random(seed)
        self._tz = tz
        self._clock = clock or partial(datetime.now, UTC)
        self._virtual_now = start
        self._step = step
        self._rate = interest_rate
        self._spread = spread
        # The walk runs unrounded: a one-second move of AAPL is below its tick, and a
        # walk rounded at every step would never leave its start.
        self._walk = {name: spec.spot for name, spec in self._specs.items()}
        self._spots = dict(self._walk)  # last price sent, on the tick grid
        self._chains_sent = dict.fromkeys(self._specs, 0)
        self._last_instant: datetime | None = None
        self._tick_id = 0
        self._loops = 0

    @property
    def products(self) -> tuple[str, ...]:
        return tuple(self._specs)

    @property
    def interest_rate(self) -> float:
        return self._rate

    def smile(self, product: str) -> Smile:
        return self._smiles[product]

    def spot(self, product: str) -> float:
        """The last price sent for `product`, the one its options are priced from."""
        return self._spots[product]

    def restart(self) -> None:
        """Emulate a feed restart: `tick_id` and the loop count start again at 0.

        Spots, the clock and the random state carry on, so timestamps stay strictly
        increasing and a restarted tick_id never comes with a repeated timestamp.
        """
        self._tick_id = 0
        self._loops = 0

    def tick(self, product: str) -> list[Message]:
        spec = self._specs[product]
        sigma = self._smiles[product].atm
        dt = TICK_SECONDS / SECONDS_PER_YEAR
        shock = sigma * math.sqrt(dt) * self._rng.gauss(0.0, 1.0) - 0.5 * sigma * sigma * dt
        self._walk[product] *= math.exp(shock)
        self._spots[product] = max(round_to_tick(self._walk[product], spec.tick), spec.tick)
        _, stamp = self._next_instant()
        payload = {
            "type": "UNDERLYING",
            "product": product,
            "price": self._spots[product],
            "timestamp": stamp,
            "tick_id": self._tick_id,
        }
        self._tick_id += 1
        return [(UNDERLYING, orjson.dumps(payload))]

    def quotes(self, product: str, n: int = QUOTE_STRIKES_PER_LOOP) -> list[Message]:
        """`n` distinct random strikes among the 21 around spot, each a call then a put."""
        return list(self._iter_quotes(product, n))

    def chain(self, product: str, expiry: str | None = None, strikes: int = 21) -> list[Message]:
        """A chain of `strikes` strikes around spot; without `expiry`, the two next expiries alternate."""
        spec = self._specs[product]
        if strikes < 1:
            raise ValueError("strikes must be at least 1")
        at, stamp = self._next_instant()
        if expiry is None:
            expiry = next_expiries(spec, at)[self._chains_sent[product] % 2]
            self._chains_sent[product] += 1
        spot = self._spots[product]
        grid = strike_grid(spot, spec.strike_step, strikes)
        payload = {
            "product": product,
            "expiry": expiry,
            "spot_price": spot,
            "strikes": grid,
            "calls": [self._option_row(spec, expiry, k, is_call=True, spot=spot, at=at, stamp=stamp) for k in grid],
            "puts": [self._option_row(spec, expiry, k, is_call=False, spot=spot, at=at, stamp=stamp) for k in grid],
            "timestamp": stamp,
        }
        return [(OPTION_CHAIN, orjson.dumps(payload))]

    def loop(self) -> list[Message]:
        """One feed second: per product a tick, 3 strikes x (call + put), and a chain every 5th loop."""
        self._loops += 1
        out: list[Message] = []
        for product in self._specs:
            out += self.tick(product)
            out += self.quotes(product)
            if self._loops % CHAIN_EVERY == 0:
                out += self.chain(product)
        return out

    def burst(self, ticks: int, quotes: int, chains: int, strikes: int = 21) -> Iterator[Message]:
        """Exactly `ticks` ticks, `quotes` quotes and `chains` chains, generated lazily.

        Every prefix of the burst has the burst's own mix, and each kind goes round-robin
        over the products (quotes in call/put pairs).
        """
        counts = (ticks, quotes, chains)
        if min(counts) < 0:
            raise ValueError("counts must be non-negative")
        streams = (
            self._round_robin(self.tick),
            self._round_robin(lambda product: self._iter_quotes(product, 1)),
            self._round_robin(lambda product: self.chain(product, strikes=strikes)),
        )
        return _interleave(streams, counts)

    def _next_instant(self) -> tuple[datetime, str]:
        """The next event instant (aware) and its naive ISO stamp in the feed's timezone."""
        if self._virtual_now is not None:
            now = self._virtual_now
            self._virtual_now += self._step
        else:
            now = self._clock()
            if now.tzinfo is None:
                raise ValueError("the feed's clock must return aware datetimes")
        # A coarse or stalled clock would repeat a timestamp, and with it a message
        # identity the enricher deduplicates on.
        if self._last_instant is not None and now <= self._last_instant:
            now = self._last_instant + _ONE_MICROSECOND
        self._last_instant = now
        local = now.astimezone(self._tz).replace(tzinfo=None)
        return now, local.isoformat(timespec="microseconds")

    def _option_row(
        self,
        spec: Product,
        expiry: str,
        strike: float,
        *,
        is_call: bool,
        spot: float,
        at: datetime,
        stamp: str,
    ) -> dict[str, Any]:
        years = year_fraction(at, expiry_instant(spec, expiry))
        forward = spot * math.exp(self._rate * years)
        # Price with the vol as sent, so `iv` is exactly the vol behind the price.
        vol = round(smile_vol(self._smiles[spec.name], forward, strike, years), 6)
        mid = black76_price(forward, strike, years, vol, is_call, r=self._rate)
        bid, ask, last = bid_ask_last(mid, spec.tick, self._spread)
        greeks = black76_greeks(forward, strike, years, vol, is_call, r=self._rate)
        return {
            "symbol": option_symbol(spec.name, expiry, is_call, strike),
            "product": spec.name,
            "strike": strike,
            "expiry": expiry,
            "option_type": "CALL" if is_call else "PUT",
            "bid": bid,
            "ask": ask,
            "last": last,
            "volume": self._rng.randint(100, 10_000),
            "open_interest": self._rng.randint(1_000, 100_000),
            "delta": round(greeks.delta, 4),
            "gamma": round(greeks.gamma, 8),
            "vega": round(greeks.vega, 4),
            "theta": round(greeks.theta, 4),
            "iv": vol,
            "timestamp": stamp,
        }

    def _iter_quotes(self, product: str, n: int) -> Iterator[Message]:
        # Lazy, so that a burst stamps and prices each quote as it is sent: a put made
        # together with its call would go out after messages stamped later.
        spec = self._specs[product]
        pool = strike_grid(self._spots[product], spec.strike_step, QUOTE_STRIKES)
        if not 0 <= n <= len(pool):
            raise ValueError(f"n must be in [0, {len(pool)}]")
        for strike in self._rng.sample(pool, n):
            expiry: str | None = None
            for is_call in (True, False):
                at, stamp = self._next_instant()
                if expiry is None:  # one expiry for the pair, so call and put match
                    expiry = self._rng.choice(next_expiries(spec, at))
                # Spot as of this quote: in a burst, a tick may come between call and put.
                spot = self._spots[product]
                row = self._option_row(spec, expiry, strike, is_call=is_call, spot=spot, at=at, stamp=stamp)
                yield OPTION_QUOTE, orjson.dumps(row)

    def _round_robin(self, make: Callable[[str], Iterable[Message]]) -> Iterator[Message]:
        while True:
            for product in self._specs:
                yield from make(product)


def _interleave(streams: Sequence[Iterator[Message]], counts: Sequence[int]) -> Iterator[Message]:
    total = sum(counts)
    sent = [0] * len(counts)
    for n in range(1, total + 1):
        # The kind furthest behind its share of the first n messages goes next.
        behind = [(count * n / total - sent[i], -i) for i, count in enumerate(counts) if sent[i] < count]
        kind = -max(behind)[1]
        sent[kind] += 1
        yield next(streams[kind])
