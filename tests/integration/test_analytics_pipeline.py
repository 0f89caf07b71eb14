"""Issue 3 through the real pipeline: model IVs recover the feed's smile; candles and surfaces persist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.feed.pricing import black76_greeks, smile_vol, year_fraction
from enricher.feed.synthetic import PRODUCTS, SyntheticFeed, expiry_instant
from enricher.records import OPTION_CHAIN, UNDERLYING
from tests.conftest import wait_for
from tests.integration.helpers import publish, surface_at

StartApp = Callable[..., Awaitable[Enricher]]
Mongo = AsyncMongoClient[dict[str, Any]]
START = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)  # a Monday; NSE expiries on the coming Thursdays


async def test_surface_recovers_the_feeds_smile(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str) -> None:
    await start_app()
    feed = SyntheticFeed(seed=11, start=START, step=timedelta(milliseconds=5), products=["NIFTY"])
    messages = feed.tick("NIFTY") + feed.chain("NIFTY")
    for channel, payload in messages:
        await publish(redis, channel, payload)

    async def chain_stored() -> bool:
        return await mongo[db_name].option_chains.count_documents({}) == 1

    await wait_for(chain_stored, what="the chain")
    chain = orjson.loads(messages[-1][1])
    surface = await surface_at(redis, "NIFTY", chain["timestamp"])
    smile = next(entry for entry in surface["expiries"] if entry["expiry"] == chain["expiry"])
    spot = chain["spot_price"]
    years = year_fraction(START, expiry_instant(PRODUCTS["NIFTY"], chain["expiry"]))
    assert smile["forward"] == pytest.approx(spot, abs=PRODUCTS["NIFTY"].strike_step)  # within one strike
    assert len(smile["strikes"]) >= 15
    tick = PRODUCTS["NIFTY"].tick
    for strike, iv in zip(smile["strikes"], smile["ivs"], strict=True):
        vol = smile_vol(feed.smile("NIFTY"), spot, strike, years)
        # Within the quote rounding: half a price tick, divided by vega (per unit of vol).
        vega = black76_greeks(spot, strike, years, vol, strike >= spot).vega * 100
        assert iv == pytest.approx(vol, abs=0.5 * tick / vega + 1e-6), strike
    assert smile["atm_iv"] == pytest.approx(smile_vol(feed.smile("NIFTY"), spot, spot, years), abs=2e-4)


async def test_closed_candles_and_surface_snapshots_are_persisted(
    start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str
) -> None:
    await start_app(surface_snapshot_interval=0.0)
    feed = SyntheticFeed(seed=12, start=START, step=timedelta(seconds=20), products=["NIFTY"])
    ticks = [payload for _ in range(7) for _, payload in feed.tick("NIFTY")]  # 2 minutes of event time
    await publish(redis, UNDERLYING, *ticks)
    await publish(redis, OPTION_CHAIN, *(payload for _, payload in feed.chain("NIFTY")))

    async def persisted() -> bool:
        candles = await mongo[db_name].ohlc_candles.count_documents({"window_minutes": 1})
        surfaces = await mongo[db_name].volatility_surfaces.count_documents({})
        return candles >= 2 and surfaces >= 1

    await wait_for(persisted, what="closed 1m candles and a surface snapshot")
    first = await mongo[db_name].ohlc_candles.find_one({"window_minutes": 1}, {"_id": 0}, sort=[("start_time", 1)])
    assert first is not None
    assert first["start_time"] == START
    assert first["num_ticks"] == 3  # 04:00:00, :20, :40
    assert first["open"] == orjson.loads(ticks[0])["price"]
    assert first["close"] == orjson.loads(ticks[2])["price"]
    info = await mongo[db_name].ohlc_candles.index_information()
    assert any(spec.get("unique") for spec in info.values() if spec["key"][0][0] == "product")
    snapshot = await mongo[db_name].volatility_surfaces.find_one({}, {"_id": 0})
    assert snapshot is not None
    assert snapshot["product"] == "NIFTY"
    assert isinstance(snapshot["timestamp"], datetime)
