"""A product's state, rebuilt from Redis the first time this process sees the product.

With several instances a product moves when its partition does (leases.py); a single
instance restarts. Either way the new holder would otherwise start from nothing: the first
chain of each expiry would have no OI change, the open candles would restart at the next
tick, the surface would miss the expiries not yet seen again. So, before the first batch
that names a product, the pipeline loads what the cache holds for it:

- the spot, from `latest:underlying:{product}`;
- the open 1/5/15-minute candles, from `ohlc:{product}:{w}m` (their open and close times
  are not kept there, so a tick that arrives late for them moves nothing);
- the latest chain of every expiry on its surface (`volatility_surface:{product}` lists them;
  no SCAN, which would walk every key in Redis), from `latest:chain:{product}:{expiry}`: it is
  modelled again to give the OI snapshot, the forward and that expiry's smile on the surface.

What stays approximate: ticks that arrived between the last cached write and the takeover
are in the candles only if they were processed before; quotes alone do not move the
surface until a chain of their expiry arrives (the cached surface is not reloaded); an
expiry whose chain gave no usable IV is not on the surface, so its OI snapshot is not restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

import structlog
from redis.asyncio import Redis

from enricher import cache as keys
from enricher.analytics.candles import Candle
from enricher.analytics.model import model_chain
from enricher.messages import parse
from enricher.records import OPTION_CHAIN, Chain, InvalidMessage, json_object
from enricher.state import CANDLE_WINDOWS, MarketState

log = structlog.get_logger("enricher.takeover")


@dataclass
class Memory:
    spot: float | None = None
    candles: list[dict[str, Any]] = field(default_factory=list)
    chains: list[bytes] = field(default_factory=list)


async def recall(redis: Redis, products: Sequence[str]) -> dict[str, Memory]:
    """What Redis holds for each of `products`, in two round trips for all of them."""
    async with redis.pipeline(transaction=False) as pipe:
        for product in products:
            pipe.get(keys.underlying_key(product))
            pipe.get(keys.surface_key(product))
            for window in CANDLE_WINDOWS:
                pipe.get(keys.ohlc_key(product, window))
        replies = await pipe.execute()
    memories: dict[str, Memory] = {}
    chain_keys: list[tuple[str, str]] = []  # (product, key)
    per_product = 2 + len(CANDLE_WINDOWS)
    for index, product in enumerate(products):
        underlying, surface, *candles = replies[index * per_product : (index + 1) * per_product]
        memory = memories[product] = Memory()
        if underlying:
            price = json_object(underlying).get("price")
            if isinstance(price, int | float):
                memory.spot = float(price)
        memory.candles = [doc for doc in map(json_object, filter(None, candles)) if doc]
        listed = json_object(surface).get("expiries") if surface else None
        expiries = [e.get("expiry") for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
        chain_keys += [(product, keys.chain_key(product, expiry)) for expiry in expiries if isinstance(expiry, str)]
    if chain_keys:
        values = await redis.mget([key for _, key in chain_keys])
        for (product, _), value in zip(chain_keys, values, strict=True):
            if isinstance(value, bytes):
                memories[product].chains.append(value)
    return memories


def adopt(state: MarketState, product: str, memory: Memory, feed_tz: tzinfo) -> int:
    """Seed `state` with `memory`; return how many pieces were restored."""
    restored = 0
    if memory.spot is not None and product not in state.spots:
        state.spots[product] = memory.spot
        restored += 1
    for doc in memory.candles:
        try:
            restored += state.candles.restore(Candle.from_json(doc))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("restore_candle_skipped", product=product, error=str(exc)[:200])
    for data in memory.chains:
        try:
            chain = parse(OPTION_CHAIN, data, feed_tz=feed_tz)
        except InvalidMessage as exc:
            log.warning("restore_chain_skipped", product=product, reason=exc.reason)
            continue
        assert isinstance(chain, Chain)
        where = (chain.product, chain.expiry)
        if where in state.snapshots:
            continue  # this process has a newer one already
        model, snapshot = model_chain(chain, state.model, None)
        state.snapshots[where] = snapshot
        if model.forward is not None:
            state.forwards[where] = model.forward
        state.surfaces.apply_model(chain, model, chain.doc["timestamp"])
        restored += 1
    return restored
