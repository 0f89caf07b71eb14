"""The surface keys are written after the batches that change them, by `Pipeline.write_surfaces`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.embedded import RedisServer
from enricher.records import OPTION_CHAIN
from enricher.settings import Settings
from enricher.source import RawMessage
from tests.conftest import sample, wait_for
from tests.integration.helpers import pipeline_on, publish, surface_at, with_fields

CHAIN = sample("synthetic_option_chain.json")


def chain_message() -> RawMessage:
    return RawMessage(OPTION_CHAIN, CHAIN, time.time())


async def test_a_chain_batch_leaves_its_surface_to_write_surfaces(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    async with pipeline_on(redis, make_settings(persist=False)) as pipeline:
        assert await pipeline.handle(OPTION_CHAIN, [chain_message()]) == ["processed"]
        assert await redis.exists("latest:chain:NIFTY:2025-01-23") == 1
        assert await redis.exists("volatility_surface:NIFTY", "iv_surface:NIFTY") == 0  # not with the batch
        assert pipeline.surfaces_changed.is_set()
        assert pipeline.state.dirty == {"NIFTY"}

        await pipeline.write_surfaces()

        assert pipeline.state.dirty == set()
        surface = orjson.loads(await redis.get("volatility_surface:NIFTY") or b"{}")
        assert surface["timestamp"] == orjson.loads(CHAIN)["timestamp"]
        [smile] = surface["expiries"]
        assert await redis.zcard("iv_surface:NIFTY") == len(smile["strikes"]) > 0


async def test_surfaces_stay_dirty_while_redis_is_down(make_settings: Callable[..., Settings]) -> None:
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        try:
            settings = make_settings(redis_url=server.url, persist=False, retry_attempts=2, retry_base=0.01)
            async with pipeline_on(redis, settings) as pipeline:
                assert await pipeline.handle(OPTION_CHAIN, [chain_message()]) == ["processed"]
                server.kill()

                await pipeline.write_surfaces()  # logs surface_write_failed; raises nothing

                assert pipeline.state.dirty == {"NIFTY"}  # for the next call, once Redis is back
        finally:
            await redis.aclose()


async def test_surface_writes_wait_out_their_interval_and_shutdown_writes_the_last(
    start_app: Callable[..., Awaitable[Enricher]], redis: Redis
) -> None:
    app = await start_app(surface_interval=60.0)
    first, later = "2025-01-20T10:15:30.123456", "2025-01-20T10:15:35.123456"
    await publish(redis, OPTION_CHAIN, CHAIN)
    await surface_at(redis, "NIFTY", first)  # the first write does not wait

    async def later_chain_cached() -> bool:
        raw = await redis.get("latest:chain:NIFTY:2025-01-23")
        return raw is not None and orjson.loads(raw)["timestamp"] == later

    await publish(redis, OPTION_CHAIN, with_fields(CHAIN, timestamp=later))
    await wait_for(later_chain_cached, what="the later chain in the cache")
    held = orjson.loads(await redis.get("volatility_surface:NIFTY") or b"{}")
    assert held["timestamp"] == first  # its surface waits for the next write, up to 60 s away
    await app.stop()
    written = orjson.loads(await redis.get("volatility_surface:NIFTY") or b"{}")
    assert written["timestamp"] == later  # shutdown writes what was waiting
