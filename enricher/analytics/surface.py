"""Per-product volatility surface, kept from the latest chain of each expiry and later quotes.

The IVs are enricher's model IVs (analytics/model.py), not the feed's. A chain replaces its
expiry's smile; a quote updates one strike of it. An update older than what it would replace
is ignored, so out-of-order delivery can't roll the surface back. The IV at a strike is the
out-of-the-money option's (put below the forward, call at or above it), else whichever side
is known. The snapshot has the contract's `volatility_surface:{product}` shape, plus per
expiry `call_ivs`, `put_ivs`, `atm_iv` (interpolated at the forward), `forward`, `rr25`,
`bf25`: with one entry per expiry, `atm_iv` by expiry is the term structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import orjson

from enricher.analytics.expiry import ChainModel
from enricher.records import Chain, Quote


class Rendered(NamedTuple):
    entry: dict[str, Any] | None  # None: no strike has an IV
    members: list[tuple[bytes, float]]


@dataclass(slots=True)
class Smile:
    spot: float = math.nan
    forward: float = math.nan
    atm_iv: float | None = None
    rr25: float | None = None
    bf25: float | None = None
    chain_time: float = -math.inf  # event time (epoch s) of the chain it came from
    ivs: dict[float, list[float]] = field(default_factory=dict)  # strike -> [call iv, put iv, call t, put t]
    # Its snapshot entry and sorted-set members, kept until it changes: a batch changes one or
    # two expiries of a product, and rebuilding every expiry's lists on each batch was ~0.1 ms
    # a product (a fifth of a chain batch's loop time).
    rendered: Rendered | None = None


@dataclass(slots=True)
class ProductSurface:
    expiries: dict[str, Smile] = field(default_factory=dict)
    timestamp: str = ""  # as received, of the newest update
    newest: float = -math.inf  # its event time
    pruned_on: date | None = None  # the day `SurfaceBook._prune` last ran for

    def stamp(self) -> str:
        """Orders snapshots for the cache's set-if-newer guard: fixed width, time order."""
        return f"{self.newest:020.6f}"


def _usable(iv: float | None) -> bool:
    return iv is not None and math.isfinite(iv) and iv > 0.0


class SurfaceBook:
    def __init__(self, max_expiries: int = 12, max_strikes: int = 2000) -> None:
        self._products: dict[str, ProductSurface] = {}
        self._max_expiries = max_expiries
        self._max_strikes = max_strikes

    def _surface(self, product: str) -> ProductSurface:
        # Not setdefault(product, ProductSurface()): that builds a surface on every call.
        surface = self._products.get(product)
        if surface is None:
            surface = self._products[product] = ProductSurface()
        return surface

    def apply_model(self, chain: Chain, model: ChainModel, event_time: str) -> None:
        surface = self._surface(chain.product)
        moment = chain.timestamp.timestamp()
        held = surface.expiries.get(chain.expiry)
        if held is not None and held.chain_time > moment:
            return
        smile = Smile(
            spot=chain.spot_price,
            forward=math.nan if model.forward is None else model.forward,
            atm_iv=model.atm_iv,
            rr25=model.rr25,
            bf25=model.bf25,
            chain_time=moment,
        )
        call_ivs, put_ivs = model.calls.values[0].tolist(), model.puts.values[0].tolist()
        # `_usable` inline (the IVs are floats, never None): a call per IV costs as much as the rest.
        smile.ivs = {
            strike: [
                call_iv if 0.0 < call_iv < math.inf else math.nan,
                put_iv if 0.0 < put_iv < math.inf else math.nan,
                moment,
                moment,
            ]
            for strike, call_iv, put_iv in zip(chain.strikes.tolist(), call_ivs, put_ivs, strict=True)
        }
        surface.expiries[chain.expiry] = smile
        self._touch(surface, moment, event_time)
        self._prune(surface, chain.timestamp.date())

    def apply_quote(self, quote: Quote, event_time: str, iv: float | None) -> None:
        if iv is None or not _usable(iv):
            return
        surface = self._surface(quote.product)
        moment = quote.timestamp.timestamp()
        smile = surface.expiries.get(quote.expiry)
        added = smile is None
        if smile is None:
            smile = surface.expiries[quote.expiry] = Smile()
        pair = smile.ivs.get(quote.strike)
        if pair is None:
            if len(smile.ivs) >= self._max_strikes:
                return  # bounded: a stream of odd strikes can't grow the surface
            pair = smile.ivs[quote.strike] = [math.nan, math.nan, -math.inf, -math.inf]
        side = 0 if quote.option_type == "CALL" else 1
        if pair[2 + side] > moment:
            return
        pair[side] = iv
        pair[2 + side] = moment
        smile.rendered = None
        self._touch(surface, moment, event_time)
        # Pruning depends only on the expiries and the day: skipped while neither changed.
        today = quote.timestamp.date()
        if added or today != surface.pruned_on:
            self._prune(surface, today)

    @staticmethod
    def _touch(surface: ProductSurface, moment: float, event_time: str) -> None:
        if moment >= surface.newest:
            surface.newest = moment
            surface.timestamp = event_time

    def stamp(self, product: str) -> str:
        return self._products[product].stamp()

    def newest(self, product: str) -> datetime:
        """Event time of the newest update to `product`'s surface (aware UTC)."""
        return datetime.fromtimestamp(self._products[product].newest, UTC)

    def _prune(self, surface: ProductSurface, today: date) -> None:
        surface.pruned_on = today
        stamp = today.isoformat()
        expired = [expiry for expiry in surface.expiries if expiry < stamp]
        for expiry in expired:
            del surface.expiries[expiry]
        while len(surface.expiries) > self._max_expiries:
            del surface.expiries[max(surface.expiries)]

    def snapshot(self, product: str) -> dict[str, Any] | None:
        """The contract's `volatility_surface:{product}` value; None before any update."""
        surface = self._products.get(product)
        if surface is None:
            return None
        expiries = [
            entry
            for entry in (_rendered(expiry, surface.expiries[expiry]).entry for expiry in sorted(surface.expiries))
            if entry
        ]
        return {"product": product, "timestamp": surface.timestamp, "expiries": expiries}

    def points(self, product: str, limit: int) -> list[tuple[bytes, float]]:
        """Members for `iv_surface:{product}`: {"strike","iv","expiry"} JSON, score = strike,
        at most `limit`, in the snapshot's order."""
        surface = self._products.get(product)
        members: list[tuple[bytes, float]] = []
        if surface is None:
            return members
        for expiry in sorted(surface.expiries):
            members += _rendered(expiry, surface.expiries[expiry]).members[: limit - len(members)]
            if len(members) >= limit:
                break
        return members


def _rendered(expiry: str, smile: Smile) -> Rendered:
    """`smile`'s snapshot entry and members, built once per change."""
    if smile.rendered is not None:
        return smile.rendered
    strikes, ivs, call_ivs, put_ivs = [], [], [], []
    pivot = smile.forward if math.isfinite(smile.forward) else smile.spot
    for strike in sorted(smile.ivs):
        call_iv, put_iv = smile.ivs[strike][:2]
        otm, itm = (put_iv, call_iv) if strike < pivot else (call_iv, put_iv)
        chosen = otm if not math.isnan(otm) else itm
        if math.isnan(chosen):
            continue
        strikes.append(strike)
        ivs.append(round(chosen, 6))
        call_ivs.append(None if math.isnan(call_iv) else call_iv)
        put_ivs.append(None if math.isnan(put_iv) else put_iv)
    entry = None
    if strikes:
        entry = {
            "expiry": expiry,
            "strikes": strikes,
            "ivs": ivs,
            "avg_iv": round(sum(ivs) / len(ivs), 4),
            "call_ivs": call_ivs,
            "put_ivs": put_ivs,
            "atm_iv": smile.atm_iv if smile.atm_iv is not None else _nearest_iv(strikes, ivs, pivot),
            "forward": None if math.isnan(smile.forward) else smile.forward,
            "rr25": smile.rr25,
            "bf25": smile.bf25,
        }
    members = [
        (orjson.dumps({"strike": strike, "iv": iv, "expiry": expiry}), strike)
        for strike, iv in zip(strikes, ivs, strict=True)
    ]
    smile.rendered = Rendered(entry, members)
    return smile.rendered


def _nearest_iv(strikes: list[float], ivs: list[float], spot: float) -> float | None:
    if math.isnan(spot):
        return None
    best = min(range(len(strikes)), key=lambda i: (abs(strikes[i] - spot), strikes[i]))
    return ivs[best]
