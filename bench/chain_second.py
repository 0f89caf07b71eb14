"""Where a chain second's latency goes at the real pace: the daemon's batches, traced, beside
the bench's send stamps and the listener's arrivals.

    .venv/bin/python -m bench.chain_second                      # persistence off, 31 s: six chain seconds
    .venv/bin/python -m bench.chain_second --steps              # ... and each batch's steps
    .venv/bin/python -m bench.chain_second --kind persist --duration 61
    .venv/bin/python -m bench.chain_second --env ENRICHER_WORKERS=3     # any setting

It runs one consumer of bench.throughput's real-rate mode (`paced.run_one`) with bench/tracing
first on the daemon's PYTHONPATH: its sitecustomize wraps `Pipeline.handle` and the steps of a
batch (parse, claim, model, state, write; and the surface writes), records the daemon's garbage
collections, and writes every batch's channel, size, first and last arrival, start and end, and
every step's start and end, when the daemon exits (see there). All of them, the send stamps and the arrivals are
`time.perf_counter()`, one monotonic clock for every process on Linux. For each feed second
that carried chains it prints, in ms after that second was sent, the batches the daemon ran
then (with --steps, their steps and any collection) and when the listener had the chains, and
at the end how many collections the run had. The wrappers add two clock reads and a tuple per
call; nothing else changes.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import harness, paced
from bench.common import output_key, percentile
from enricher.cache import ENRICHED_CHAIN

ROOT = Path(__file__).resolve().parents[1]
TRACING = Path(__file__).resolve().with_name("tracing")
WINDOW = (-0.005, 0.05)  # seconds around a chain second's send stamp whose batches are shown

Batch = tuple[str, float, float, int, float, float, int]  # as tracing/sitecustomize.py writes them
Step = tuple[int, str, float, float]


async def traced_run(kind: str, rate: float, duration: float, out: str, extra: dict[str, str]) -> paced.PacedResult:
    # The checkout first, so the daemon and the recorder import the enricher this bench runs.
    path = [str(TRACING), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = extra | {"PYTHONPATH": os.pathsep.join(path), "BENCH_TRACE_OUT": out}
    async with harness.session(60.0, env) as ctx:
        return await paced.run_one(ctx, kind, rate, duration)


def read_trace(out: str) -> tuple[list[Batch], list[Step]]:
    """Every traced process's batches (by start) and steps."""
    batches: list[Batch] = []
    steps: list[Step] = []
    for name in glob.glob(f"{out}.*"):
        with open(name, encoding="utf-8") as file:
            trace = json.load(file)
        batches += [tuple(row) for row in trace["batches"]]
        steps += [tuple(row) for row in trace["steps"]]
    return sorted(batches, key=lambda batch: batch[1]), steps


def chain_seconds(result: paced.PacedResult) -> list[tuple[float, list[float]]]:
    """(send stamp, the chains' arrivals) of every feed second whose chains were output."""
    seconds: dict[float, list[float]] = {}
    for at, channel, data in result.arrivals:
        sent = result.sent.get(output_key(data))
        if channel == ENRICHED_CHAIN and sent is not None:
            seconds.setdefault(sent, []).append(at)
    return sorted(seconds.items())


def report(result: paced.PacedResult, batches: list[Batch], steps: list[Step], *, show_steps: bool) -> None:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:6.2f}"

    by_batch: dict[int, list[Step]] = {}
    for step in steps:
        by_batch.setdefault(step[0], []).append(step)
    for sent, arrivals in chain_seconds(result):
        print(
            f"chain second sent at +{sent - result.started:.1f} s: its {len(arrivals)} chains reached the listener "
            f"at {ms(min(arrivals) - sent)}..{ms(max(arrivals) - sent)} ms"
        )
        lines = []  # (when, text, steps' texts): batches and surface writes in start order
        for channel, start, end, size, first, last, ident in batches:
            if WINDOW[0] <= start - sent <= WINDOW[1]:
                kind = channel.rsplit(":", 1)[-1]
                line = f"    {kind:12s} {size:4d} msgs, arrived {ms(first - sent)}..{ms(last - sent)}"
                inner = [
                    f"{'':8}{step:9s}{'':29}{ms(begun - sent)} -> {ms(ended - sent)}"
                    for _, step, begun, ended in sorted(by_batch.get(ident, []), key=lambda row: row[2])
                ]
                lines.append((start, f"{line}  batch {ms(start - sent)} -> {ms(end - sent)}", inner))
        if show_steps:  # the surface writes, which follow the batches rather than run in one
            lines += [
                (begun, f"    {step:12s}{'':31}{ms(begun - sent)} -> {ms(ended - sent)}", [])
                for ident, step, begun, ended in by_batch.get(-1, [])
                if (step == "surfaces" or step.startswith("gc")) and WINDOW[0] <= begun - sent <= WINDOW[1]
            ]
        for _, line, inner in sorted(lines, key=lambda line: line[0]):
            print(line)
            for text in inner if show_steps else []:
                print(text)
    latencies = sorted(at - sent for sent, arrivals in chain_seconds(result) for at in arrivals)
    middle, tail = percentile(latencies, 0.5), percentile(latencies, 0.9)
    if middle is not None and tail is not None:
        print(
            f"the {len(latencies)} chains reached the listener at a median {ms(middle)} ms, "
            f"90th percentile {ms(tail)}, max {ms(latencies[-1])}"
        )
    collections = [step for step in steps if step[1].startswith("gc") and step[2] >= result.started]
    longest = max((ended - begun for _, _, begun, ended in collections), default=0.0)
    print(
        f"the daemon collected garbage {len(collections)} times while the feed ran "
        f"({', '.join(sorted({step[1] for step in collections})) or '-'}); the longest took {ms(longest)} ms"
    )
    if not batches:
        print("no batches were traced: is bench/tracing/sitecustomize.py shadowed by another sitecustomize?")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.chain_second", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("persist", "nopersist"), default="nopersist")
    parser.add_argument("--rate", type=float, default=1.0, help="feed loops/s (1 = the real pace)")
    parser.add_argument("--duration", type=float, default=31.0, help="seconds; chains go every fifth second")
    parser.add_argument("--steps", action="store_true", help="also each batch's parse, claim, model, state and write")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for enricher"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="enricher-trace-") as where:
        out = os.path.join(where, "batches")
        env = dict(item.split("=", 1) for item in args.env)
        result = asyncio.run(traced_run(args.kind, args.rate, args.duration, out, env))
        report(result, *read_trace(out), show_steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
