"""Throughput of enricher against a bare pub/sub consumer and SecantusDB's own write ceiling.

    .venv/bin/python -m bench.throughput                  # every burst scenario, 3 rounds, ~70 s
    .venv/bin/python -m bench.throughput --big            # ... and again with 200-strike chains
    .venv/bin/python -m bench.throughput --rate 1 10      # real feed pace and 10x, 30 s each
    .venv/bin/python -m bench.throughput --scenario persist --env ENRICHER_POOL_WORKERS=0

Scenarios: bare (bench/bare.py, the ceiling of a Python pub/sub consumer); floor (bench/bare.py
--analytics: the same consumer doing enricher's own chain work inline, and nothing else; in the
real-rate mode by default, in bursts only when named); mongo and mongo3 (unordered insert_many
of the burst's documents from this process, one insert at a time, or one per collection at
once as enricher's store does); persist and nopersist (`python -m enricher run`,
ENRICHER_PERSIST true/false). All share one private Redis and one SecantusDB
(:memory:), stopped however the run ends; Redis is flushed before each consumer starts.

A burst is generated before the clock starts and published in pipelines, each stamped as
it is sent. Latency is the arrival of an enriched output at the listener (its own
connection, in this process) minus the send stamp of its input, matched by (product,
timestamp). A run is complete when every output has arrived, and, for enricher, every
symbol's last quote is in latest:option:* and (persist) every document is in MongoDB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from bench import harness, paced
from bench.ceiling import insert_all
from bench.common import (
    Key,
    TreeSampler,
    cpu_seconds,
    latencies_ms,
)
from bench.report import Result, report
from enricher.feed.synthetic import Message, SyntheticFeed
from enricher.loop import run
from enricher.records import OPTION_QUOTE
from enricher.store import CHAINS, QUOTES, TICKS

SCENARIOS = {
    "bare": "1 bare",
    "floor": "1b floor (bare + chain analytics)",
    "mongo": "2 mongo ceiling",
    "mongo3": "2b mongo 3 at once",
    "persist": "3 enricher",
    "nopersist": "4 no-persist",
}


@dataclass
class Workload:
    strikes: int
    messages: list[Message]
    keys: list[Key | None]  # (product, timestamp) of each tick and chain
    counts: dict[str, int]  # per collection
    last_quotes: dict[str, str]  # symbol -> timestamp of its last quote
    last_ids: dict[str, str]  # collection -> _id of its last document

    @property
    def outputs(self) -> int:
        return self.counts[TICKS] + self.counts[CHAINS]


def make_workload(args: argparse.Namespace, strikes: int) -> Workload:
    feed = SyntheticFeed(seed=args.seed, start=datetime.now(UTC), step=timedelta(milliseconds=1))
    messages = list(feed.burst(args.ticks, args.quotes, args.chains, strikes=strikes))
    keys: list[Key | None] = []
    last_quotes: dict[str, str] = {}
    last_ids: dict[str, str] = {}
    for channel, payload in messages:
        doc = orjson.loads(payload)
        keys.append(None if channel == OPTION_QUOTE else (doc["product"], doc["timestamp"]))
        if channel == OPTION_QUOTE:
            last_quotes[doc["symbol"]] = doc["timestamp"]
        last_ids[harness.COLLECTION_OF[channel]] = harness.stored_id(channel, doc)
    counts = {TICKS: args.ticks, QUOTES: args.quotes, CHAINS: args.chains}
    return Workload(strikes, messages, keys, counts, last_quotes, last_ids)


async def run_consumer(ctx: harness.Context, kind: str, load: Workload, pipeline: int) -> Result:
    result = Result(SCENARIOS[kind], len(load.messages))
    async with harness.consumer(ctx, kind) as running:
        ctx.listener.reset(load.counts[TICKS], load.counts[CHAINS])
        tree, (redis_cpu, mongo_cpu) = TreeSampler(running.proc.pid), ctx.server_samplers()
        for sampler in (tree, redis_cpu, mongo_cpu):
            sampler.mark()
        own = cpu_seconds(os.getpid()) or 0.0
        sampling = asyncio.create_task(tree.run())
        sent: dict[Key, float] = {}
        try:
            start = time.perf_counter()
            for i in range(0, len(load.messages), pipeline):
                async with ctx.redis.pipeline(transaction=False) as pipe:
                    for channel, payload in load.messages[i : i + pipeline]:
                        pipe.publish(channel, payload)
                    stamp = time.perf_counter()
                    await pipe.execute()
                for key in load.keys[i : i + pipeline]:
                    if key is not None:
                        sent[key] = stamp
            result.publish_s = time.perf_counter() - start
            expected = harness.Expected(
                docs=load.counts if kind == "persist" else None,
                last_ids=load.last_ids,
                last_quotes=load.last_quotes if kind not in harness.REFERENCES else None,
            )
            done = await harness.wait_done(ctx, running, expected)
            result.cpu = tree.cpu_since_mark()
            result.bench_cpu = (cpu_seconds(os.getpid()) or 0.0) - own
            result.server_cpu = (redis_cpu.cpu_since_mark(), mongo_cpu.cpu_since_mark())
            result.memory = tree.memory()
        finally:
            sampling.cancel()
        got = len(ctx.listener.arrivals)
        result.outputs = f"{got}/{load.outputs}"
        if ctx.listener.arrivals:
            result.outputs_per_s = got / max(ctx.listener.arrivals[-1][0] - start, 1e-9)
        result.latencies, unmatched = latencies_ms(ctx.listener.arrivals, sent)
        result.end = None if done.end is None else done.end - start
        if done.outputs_at is not None:
            result.last_output = f"{done.outputs_at - start:.2f}"
        if kind == "persist":
            result.docs = f"{sum(done.docs.values())}/{len(load.messages)}"
            result.docs_done = "-" if done.docs_at is None else f"{done.docs_at - start:.2f}"
            if done.docs_at is None:
                result.notes.append(
                    "docs " + ", ".join(f"{n}={done.docs.get(n, 0)}/{load.counts[n]}" for n in harness.COLLECTIONS)
                )
        if kind not in harness.REFERENCES:
            result.cache = f"{done.cache_missing} stale" if done.cache_at is None else f"{done.cache_at - start:.2f}"
        await _notes(ctx, result, running, done, unmatched)
    logged = running.log_lines()  # complete now that the consumer has stopped
    if kind not in harness.REFERENCES and logged:
        result.notes.append(f"enricher logged {len(logged)} lines at warning+; last: {logged[-1][:300]}")
    return result


async def _notes(
    ctx: harness.Context, result: Result, running: harness.Consumer, done: harness.Completion, unmatched: int
) -> None:
    if done.end is None:
        result.notes.append(f"INCOMPLETE after {ctx.timeout:.0f} s")
    if done.exited is not None:
        result.notes.append(f"consumer exited with {done.exited}: {running.log_tail()}")
    if ctx.listener.failed:
        result.notes.append(f"the listener lost its connection: {ctx.listener.failed}")
    if unmatched:
        result.notes.append(f"{unmatched} outputs matched no input (or repeated one)")
    dlq = await harness.dlq_length(ctx.redis)
    if dlq:
        result.notes.append(f"dlq:enrichment has {dlq} records")
    cut = await harness.buffer_disconnects(ctx.redis)
    if cut:
        result.notes.append(f"redis cut {cut} clients off (output buffer limit)")


async def run_ceiling(ctx: harness.Context, kind: str, load: Workload, batch: int) -> Result:
    ceiling = await insert_all(ctx, load.messages, batch, concurrent=kind == "mongo3")
    result = Result(SCENARIOS[kind], len(load.messages), end=ceiling.seconds)
    result.server_cpu = (None, ceiling.mongo_cpu)
    result.bench_cpu = ceiling.bench_cpu
    result.docs = f"{ceiling.stored}/{len(load.messages)}"
    return result


async def main(args: argparse.Namespace) -> int:
    env = dict(item.split("=", 1) for item in args.env)
    async with harness.session(args.timeout, env) as ctx:
        if args.rate:
            await paced.run_all(ctx, args.rate, args.duration, [s for s in args.scenario if s in paced.KINDS])
        else:
            await _bursts(ctx, args)
    return 0


async def _bursts(ctx: harness.Context, args: argparse.Namespace) -> None:
    for strikes in [args.strikes] + ([200] if args.big else []):
        load = make_workload(args, strikes)
        title = (
            f"burst: {args.ticks} ticks + {args.quotes} quotes + {args.chains} chains x {strikes} strikes"
            f" = {len(load.messages)} msgs, {sum(len(p) for _, p in load.messages) / 1e6:.1f} MB"
        )
        print(f"\n{title}  (load avg {os.getloadavg()[0]:.2f})", flush=True)
        runs: dict[str, list[Result]] = {kind: [] for kind in args.scenario}
        for repeat in range(args.repeat):  # round after round, so that noise spreads over all
            for kind in args.scenario:
                print(f"  running {SCENARIOS[kind]} ({repeat + 1}/{args.repeat}) ...", flush=True)
                if kind.startswith("mongo"):
                    runs[kind].append(await run_ceiling(ctx, kind, load, args.batch))
                else:
                    runs[kind].append(await run_consumer(ctx, kind, load, args.pipeline))
        results = []
        for kind in args.scenario:  # the run with the median input rate stands for the scenario
            ranked = sorted(runs[kind], key=lambda r: r.rate or 0.0)
            chosen = ranked[(len(ranked) - 1) // 2]
            chosen.repeats = [r.rate for r in runs[kind]]
            results.append(chosen)
        report(f"{title}, median of {args.repeat} run(s)", results)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=5000)
    parser.add_argument("--quotes", type=int, default=10000)
    parser.add_argument("--chains", type=int, default=250)
    parser.add_argument("--strikes", type=int, default=21)
    parser.add_argument("--big", action="store_true", help="also run every scenario with 200-strike chains")
    parser.add_argument(
        "--scenario", nargs="+", choices=list(SCENARIOS), help="default: all but floor for bursts, all for --rate"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the median is shown")
    parser.add_argument("--pipeline", type=int, default=200, help="publishes per pipeline (one time stamp)")
    parser.add_argument("--batch", type=int, default=1000, help="insert_many batch of the mongo ceiling")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for completion")
    parser.add_argument("--rate", type=float, nargs="+", help="real-rate mode: feed loops/s (1 = real pace)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate in real-rate mode")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for enricher, e.g. ENRICHER_POOL_WORKERS=0",
    )
    args = parser.parse_args(argv)
    if args.scenario is None:
        args.scenario = [kind for kind in SCENARIOS if args.rate or kind != "floor"]
    return args


if __name__ == "__main__":
    try:
        sys.exit(run(main(parse_args())))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: consumers and servers stopped", file=sys.stderr)
        sys.exit(130)
