"""Where a chain second's latency goes at the real pace: the daemon's batches, traced, beside
the bench's send stamps and the listener's arrivals.

    .venv/bin/python -m bench.chain_second                      # persistence off, 31 s: six chain seconds
    .venv/bin/python -m bench.chain_second --kind persist --duration 61

It runs one consumer of bench.throughput's real-rate mode (`paced.run_one`) with bench/tracing
first on the daemon's PYTHONPATH: its sitecustomize wraps `Pipeline.handle` and writes every
batch's channel, size, first and last arrival, start and end when the daemon exits (see there).
All of them, the send stamps and the arrivals are `time.perf_counter()`, one monotonic clock
for every process on Linux. For each feed second that carried chains it prints, in ms after
that second was sent, the batches the daemon ran then and when the listener had the chains.
The wrapper adds two clock reads and a tuple per batch; nothing else changes.
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
from bench.common import output_key
from enricher.cache import ENRICHED_CHAIN

ROOT = Path(__file__).resolve().parents[1]
TRACING = Path(__file__).resolve().with_name("tracing")
WINDOW = (-0.005, 0.05)  # seconds around a chain second's send stamp whose batches are shown

Batch = tuple[str, float, float, int, float, float]  # as tracing/sitecustomize.py writes them


async def traced_run(kind: str, rate: float, duration: float, out: str) -> paced.PacedResult:
    # The checkout first, so the daemon and the recorder import the enricher this bench runs.
    path = [str(TRACING), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(path), "BENCH_TRACE_OUT": out}
    async with harness.session(60.0, env) as ctx:
        return await paced.run_one(ctx, kind, rate, duration)


def read_batches(out: str) -> list[Batch]:
    batches: list[Batch] = []
    for name in glob.glob(f"{out}.*"):
        with open(name, encoding="utf-8") as file:
            batches += [tuple(row) for row in json.load(file)]
    return sorted(batches, key=lambda batch: batch[1])


def chain_seconds(result: paced.PacedResult) -> list[tuple[float, list[float]]]:
    """(send stamp, the chains' arrivals) of every feed second whose chains were output."""
    seconds: dict[float, list[float]] = {}
    for at, channel, data in result.arrivals:
        sent = result.sent.get(output_key(data))
        if channel == ENRICHED_CHAIN and sent is not None:
            seconds.setdefault(sent, []).append(at)
    return sorted(seconds.items())


def report(result: paced.PacedResult, batches: list[Batch]) -> None:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:6.2f}"

    for sent, arrivals in chain_seconds(result):
        print(
            f"chain second sent at +{sent - result.started:.1f} s: its {len(arrivals)} chains reached the listener "
            f"at {ms(min(arrivals) - sent)}..{ms(max(arrivals) - sent)} ms"
        )
        for channel, start, end, size, first, last in batches:
            if WINDOW[0] <= start - sent <= WINDOW[1]:
                kind = channel.rsplit(":", 1)[-1]
                print(
                    f"    {kind:12s} {size:4d} msgs, arrived {ms(first - sent)}..{ms(last - sent)}"
                    f"  batch {ms(start - sent)} -> {ms(end - sent)}"
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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="enricher-trace-") as where:
        out = os.path.join(where, "batches")
        result = asyncio.run(traced_run(args.kind, args.rate, args.duration, out))
        report(result, read_batches(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
