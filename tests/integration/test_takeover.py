"""A product's state survives a restart (or a partition moving): it is loaded from Redis on first sight."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.cache import chain_key, ohlc_key
from enricher.feed.synthetic import SyntheticFeed
from enricher.settings import Settings
from tests.conftest import wait_for
from tests.integration.helpers import publish

START = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)


async def run_once(
    settings: Settings, redis: Redis, messages: list[tuple[str, bytes]], until: Callable[[], Any]
) -> int:
    """Start an instance, publish `messages`, wait for `until`, stop; return its state_restored count."""
    app = Enricher(settings)
    await app.start()
    try:
        for channel, data in messages:
            await publish(redis, channel, data)
        await wait_for(until, 15, "the messages processed")
    finally:
        await app.stop()
    return app.metrics.events["state_restored"]


@pytest.mark.parametrize("restore", [True, False])
async def test_a_restarted_instance_continues_oi_change_and_candles(
    make_settings: Callable[..., Settings], redis: Redis, restore: bool
) -> None:
    settings = make_settings(restore_state=restore)
    feed = SyntheticFeed(seed=4, start=START, step=timedelta(seconds=1), products=["NIFTY"])
    [first_chain] = feed.chain("NIFTY")
    expiry = orjson.loads(first_chain[1])["expiry"]
    before = [*feed.tick("NIFTY"), *feed.tick("NIFTY"), first_chain]
    after = [*feed.tick("NIFTY"), *feed.chain("NIFTY", expiry)]

    async def chain_at(stamp: str) -> bool:
        cached = await redis.get(chain_key("NIFTY", expiry))
        return cached is not None and orjson.loads(cached)["timestamp"] == stamp

    first_stamp = orjson.loads(first_chain[1])["timestamp"]
    assert await run_once(settings, redis, before, lambda: chain_at(first_stamp)) == 0  # nothing to load yet
    second_stamp = orjson.loads(after[-1][1])["timestamp"]
    restored = await run_once(settings, redis, after, lambda: chain_at(second_stamp))

    enriched = orjson.loads(await redis.get(chain_key("NIFTY", expiry)) or b"{}")
    change = enriched["model"]["oi_change"]["call"]
    candle = orjson.loads(await redis.get(ohlc_key("NIFTY", 1)) or b"{}")
    if restore:
        assert restored >= 3  # the spot, the open candles, the chain
        assert any(value is not None for value in change)  # against the chain before the restart
        assert candle["num_ticks"] == 3  # two ticks before the restart, one after
    else:
        assert restored == 0
        assert all(value is None for value in change)  # a fresh start has nothing to compare with
        # The new instance opens the minute again with one tick; the cache keeps the older state
        # with two (set-if-newer), so the tick after the restart never reaches the candle.
        assert candle["num_ticks"] == 2
