"""Soak: enricher (persistence on) at the feed's real rate for 10 minutes.

Every 10 s it samples the RSS of enricher's process tree (summed, and as PSS: shared pages
counted once, see `common.pss_kib`) and the queue depths (from its /metrics), prints the
series, then the least-squares slope of RSS over the run. A flat memory profile has a slope
within the noise of the samples.

    python -m bench.soak [--duration 600] [--every 10] [--rate 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from bench.common import (
    QUEUES,
    machine_header,
    process_tree,
    pss_kib,
    queue_gauges,
    rss_kib,
    stop_process,
    wait_subscribed,
)
from enricher.embedded import MongoServer, RedisServer, free_port
from enricher.feed.publisher import publish_paced
from enricher.feed.synthetic import SyntheticFeed
from enricher.records import CHANNELS


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "enricher", "run"], env=env, stdout=sink, stderr=sink)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


async def main(args: argparse.Namespace) -> int:
    with RedisServer() as redis_server, MongoServer() as mongo_server, tempfile.TemporaryDirectory() as logs:
        print("\n".join(machine_header(redis_server.binary)), flush=True)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHER_")}
        env |= {
            "REDIS_URL": redis_server.url,
            "MONGO_URL": mongo_server.url,
            "ENRICHER_LOG_LEVEL": "warning",
            "ENRICHER_HTTP_PORT": str(port),
        }
        redis = Redis.from_url(redis_server.url)
        baseline = {channel: 0 for channel in CHANNELS}
        daemon = spawn(env, Path(logs) / "enricher.log")
        try:
            await wait_subscribed(redis, CHANNELS, baseline, daemon, within=60.0)
            stop = asyncio.Event()
            feed = SyntheticFeed(seed=int(time.time()))
            publisher = asyncio.create_task(publish_paced(redis, feed, rate=args.rate, stop=stop))
            started = time.monotonic()
            series: list[tuple[float, float]] = []
            peak_pss = 0.0
            print(f"\n{'t (s)':>6} {'RSS MiB':>8} {'PSS MiB':>8}   queue depths (ticks quotes chains)")
            while (elapsed := time.monotonic() - started) < args.duration:
                tree = process_tree(daemon.pid)
                rss = sum(rss_kib(pid) for pid in tree) / 1024
                pss = sum(pss_kib(pid) for pid in tree) / 1024
                peak_pss = max(peak_pss, pss)
                [depths] = await asyncio.to_thread(queue_gauges, port, "enricher_queue_depth")
                series.append((elapsed, rss))
                shown = " ".join(f"{depths.get(name, 0):.0f}" for name in QUEUES)
                print(f"{elapsed:6.0f} {rss:8.1f} {pss:8.1f}   {shown}", flush=True)
                await asyncio.sleep(args.every)
            stop.set()
            counts = await publisher
            peaks, capacities = await asyncio.to_thread(
                queue_gauges, port, "enricher_queue_depth_peak", "enricher_queue_capacity"
            )
        finally:
            await asyncio.to_thread(stop_process, daemon)
            await redis.aclose()
    rising = slope(series[len(series) // 4 :])  # after the warm-up quarter
    noise = max(rss for _, rss in series) - min(rss for _, rss in series)
    print(f"\npublished {sum(counts.values())} messages in {args.duration:.0f} s")
    print(f"RSS slope after warm-up: {rising * 60:+.3f} MiB/min (range of all samples {noise:.1f} MiB)")
    print(f"peak RSS {max(rss for _, rss in series):.1f} MiB (tree, summed); peak PSS {peak_pss:.1f} MiB")
    shown = ", ".join(f"{name} {peaks[name]:.0f} of {capacities[name]:.0f}" for name in QUEUES)
    print(f"most messages ever queued at once (enricher_queue_depth_peak): {shown}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1.0, help="feed loops per second")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parser.parse_args())))
