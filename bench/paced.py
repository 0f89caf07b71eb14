"""Real-rate mode of bench.throughput: the feed at R loops/s (8 products), latency and CPU per consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench import harness
from bench.common import (
    QUEUES,
    Key,
    TreeSampler,
    fmt,
    latencies_ms,
    memory_row,
    output_key,
    percentile,
    print_table,
    queue_gauges,
)
from enricher.feed.publisher import publish_paced
from enricher.feed.synthetic import Message, SyntheticFeed
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from enricher.store import CHAINS, QUOTES, TICKS

KINDS = ("bare", "floor", "persist", "nopersist")
NAMES = {"bare": "bare", "floor": "floor", "persist": "enricher", "nopersist": "no-persist"}


class StampedFeed(SyntheticFeed):
    """The real-clock feed, noting when each loop's ticks and chains go out (just before the publish)."""

    def __init__(self, sent: dict[Key, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent = sent
        self.last_ids: dict[str, str] = {}  # collection -> _id of the last document sent

    def loop(self) -> list[Message]:
        out = super().loop()
        docs = [(channel, orjson.loads(payload)) for channel, payload in out]
        now = time.perf_counter()
        for channel, doc in docs:
            if channel != OPTION_QUOTE:
                self.sent[doc["product"], doc["timestamp"]] = now
            self.last_ids[harness.COLLECTION_OF[channel]] = harness.stored_id(channel, doc)
        return out


@dataclass
class PacedResult:
    name: str
    published: int = 0
    duration: float = 0.0
    outputs: str = "-"
    docs: str = "-"
    latencies: list[float] = field(default_factory=list)
    by_output: dict[str, list[float]] = field(default_factory=dict)  # enriched channel -> latencies
    cpu_percent: float | None = None
    peak_queues: str = "-"  # each queue's most messages at once, as % of its capacity
    memory: tuple[int, int, int] | None = None  # TreeSampler.memory()
    notes: list[str] = field(default_factory=list)
    started: float = 0.0  # perf_counter() when the feed started
    sent: dict[Key, float] = field(default_factory=dict)  # (product, timestamp) -> its send stamp
    arrivals: list[tuple[float, str, bytes]] = field(default_factory=list)  # the listener's, as it had them


async def run_one(ctx: harness.Context, kind: str, rate: float, duration: float) -> PacedResult:
    result = PacedResult(f"{NAMES[kind]} @{rate:g}/s", duration=duration)
    async with harness.consumer(ctx, kind) as running:
        ctx.listener.reset(1 << 62, 1 << 62)  # not known until the feed stops
        tree = TreeSampler(running.proc.pid)
        tree.mark()
        sampling = asyncio.create_task(tree.run())
        sent: dict[Key, float] = {}
        try:
            start = time.perf_counter()
            feed = StampedFeed(sent, seed=int(time.time()))
            counts = await publish_paced(ctx.redis, feed, rate=rate, duration=duration)
            ticks, chains = counts.get(UNDERLYING, 0), counts.get(OPTION_CHAIN, 0)
            ctx.listener.expect(ticks, chains)
            docs = {TICKS: ticks, QUOTES: counts.get(OPTION_QUOTE, 0), CHAINS: chains}
            done = await harness.wait_done(ctx, running, harness.Expected(docs, feed.last_ids))
            wall = time.perf_counter() - start
            result.cpu_percent = 100.0 * tree.cpu_since_mark() / wall
            if running.metrics_port is not None:
                result.peak_queues = await asyncio.to_thread(_peak_queues, running.metrics_port)
            result.memory = tree.memory()
        finally:
            sampling.cancel()
        result.published = sum(counts.values())
        result.outputs = f"{len(ctx.listener.arrivals)}/{ticks + chains}"
        if running.db is not None:
            result.docs = f"{sum(done.docs.values())}/{result.published}"
        result.started, result.sent, result.arrivals = start, sent, list(ctx.listener.arrivals)
        result.latencies, unmatched = latencies_ms(ctx.listener.arrivals, sent)
        for channel in ctx.listener.channels:
            arrivals = [arrival for arrival in ctx.listener.arrivals if arrival[1] == channel]
            result.by_output[channel] = latencies_ms(arrivals, sent)[0]
        result.notes.append(_slowest(ctx.listener.arrivals, sent, start))
        if done.end is None:
            result.notes.append(f"INCOMPLETE after {ctx.timeout:.0f} s (exit status {done.exited})")
        if unmatched:
            result.notes.append(f"{unmatched} outputs matched no input")
        if ctx.listener.failed:
            result.notes.append(f"the listener lost its connection: {ctx.listener.failed}")
    logged = running.log_lines()
    if kind not in harness.REFERENCES and logged:
        result.notes.append(f"enricher logged {len(logged)} lines at warning+; last: {logged[-1][:300]}")
    return result


async def run_all(ctx: harness.Context, rates: Sequence[float], duration: float, kinds: Sequence[str]) -> None:
    results = []
    for rate in rates:
        for kind in kinds:
            print(f"  running {NAMES[kind]} at {rate:g} loops/s for {duration:g} s ...", flush=True)
            results.append(await run_one(ctx, kind, rate, duration))
    rows = [
        ("messages published", [str(r.published) for r in results]),
        ("input msg/s", [fmt(r.published / r.duration, ".0f") for r in results]),
        ("outputs received/expected", [r.outputs for r in results]),
        ("docs stored/expected", [r.docs for r in results]),
        ("latency p50, ms", [fmt(percentile(r.latencies, 0.5)) for r in results]),
        ("latency p99, ms", [fmt(percentile(r.latencies, 0.99)) for r in results]),
        ("latency max, ms", [fmt(r.latencies[-1] if r.latencies else None) for r in results]),
        *(
            (f"  {channel.rsplit(':', 1)[-1]} p50 / p99, ms", [_p50_p99(r.by_output.get(channel)) for r in results])
            for channel in ctx.listener.channels
        ),
        ("peak queue depth, % of capacity (t/q/c)", [r.peak_queues for r in results]),
        ("CPU % of one core (process tree)", [fmt(r.cpu_percent) for r in results]),
        memory_row([r.memory for r in results]),
    ]
    print_table(f"real rate: 8 products, {duration:g} s per run", [r.name for r in results], rows)
    for r in results:
        for note in r.notes:
            print(f"  [{r.name}] {note}")


def _slowest(arrivals: Sequence[tuple[float, str, bytes]], sent: dict[Key, float], start: float, count: int = 6) -> str:
    """The slowest outputs, and when in the run their inputs were sent: a tail made of one
    moment (the first second, say) reads differently from one spread over the run."""
    seen = []
    for at, channel, data in arrivals:
        key = output_key(data)
        if key in sent:
            seen.append(((at - sent[key]) * 1000.0, sent[key] - start, channel.rsplit(":", 1)[-1]))
    worst = sorted(seen, reverse=True)[:count]
    return "slowest: " + ", ".join(f"{ms:.1f} ms ({kind} sent at +{when:.1f} s)" for ms, when, kind in worst)


def _p50_p99(latencies: list[float] | None) -> str:
    if not latencies:
        return "-"
    return f"{fmt(percentile(latencies, 0.5))} / {fmt(percentile(latencies, 0.99))}"


def _peak_queues(port: int) -> str:
    """Each queue's high-water mark (enricher_queue_depth_peak) as a percentage of its capacity."""
    peaks, capacities = queue_gauges(port, "enricher_queue_depth_peak", "enricher_queue_capacity")
    return "/".join(f"{100.0 * peaks[name] / capacities[name]:.2g}" for name in QUEUES)
