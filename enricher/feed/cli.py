"""`python -m enricher feed`: the synthetic feed on Redis pub/sub (or the streams), paced or as a burst."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from zoneinfo import ZoneInfo

import structlog
from redis.asyncio import Redis

from enricher import settings
from enricher.bridge import writer_for
from enricher.feed.publisher import publish_burst, publish_paced
from enricher.feed.synthetic import SyntheticFeed

log = structlog.get_logger("enricher.feed")


async def run_feed(args: argparse.Namespace) -> int:
    redis = Redis.from_url(args.redis_url)
    feed = SyntheticFeed(seed=args.seed, tz=ZoneInfo(args.tz))
    sink = None
    if args.streams:
        config = settings.load(os.environ)
        sink = writer_for(redis, config).write
        log.info("feed_to_streams", prefix=config.stream_prefix, partitions=config.stream_partitions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started = time.perf_counter()
    try:
        if args.burst is not None:
            messages = feed.burst(args.burst, 6 * args.burst, args.burst // 5, strikes=args.strikes)
            counts = await publish_burst(redis, messages, sink=sink)
        else:
            log.info("feed_started", rate=args.rate, products=len(feed.products))
            counts = await publish_paced(redis, feed, rate=args.rate, duration=args.duration, stop=stop, sink=sink)
    finally:
        await redis.aclose()
    seconds = time.perf_counter() - started
    log.info("feed_done", published=counts, seconds=round(seconds, 3), per_s=round(sum(counts.values()) / seconds))
    return 0
