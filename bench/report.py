"""The burst table of bench.throughput: one column per scenario, one row per measure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.common import fmt, memory_row, percentile, print_table


@dataclass
class Result:
    name: str
    messages: int
    end: float | None = None  # seconds from the first publish to the last output/document
    publish_s: float = 0.0
    outputs: str = "-"
    outputs_per_s: float | None = None
    docs: str = "-"
    cache: str = "-"  # when the quote cache was current, or how many symbols were stale
    last_output: str = "-"  # seconds from the first publish
    docs_done: str = "-"
    latencies: list[float] = field(default_factory=list)
    cpu: float | None = None  # seconds, consumer process tree
    server_cpu: tuple[float | None, float | None] = (None, None)  # redis-server, SecantusDB
    memory: tuple[int, int, int] | None = None  # TreeSampler.memory()
    bench_cpu: float | None = None  # seconds, this process (publisher, listener, polls)
    notes: list[str] = field(default_factory=list)
    repeats: list[float | None] = field(default_factory=list)  # input msg/s of every repeat

    @property
    def rate(self) -> float | None:
        return None if not self.end else self.messages / self.end

    @property
    def all_cpu(self) -> float | None:
        """CPU seconds of every process the run used: consumer, Redis, SecantusDB, the bench."""
        parts = [x for x in (self.cpu, *self.server_cpu, self.bench_cpu) if x is not None]
        return sum(parts) if parts else None


def report(title: str, results: Sequence[Result]) -> None:
    def row(name: str, values: list[str]) -> tuple[str, list[str]]:
        return name, values

    def busy(r: Result) -> str:
        return fmt(None if r.cpu is None or not r.end else 100 * r.cpu / r.end, ".0f")

    def per_k(r: Result, seconds: float | None) -> str:
        return fmt(None if seconds is None else seconds / (r.messages / 1000), ".3f")

    def machine(r: Result) -> str:
        cores = os.cpu_count() or 1
        return fmt(None if r.all_cpu is None or not r.end else 100 * r.all_cpu / (r.end * cores), ".0f")

    rows = [
        row("input msg/s (first publish -> last output/doc)", [fmt(r.rate, ".0f") for r in results]),
        row("  ... each repeat", ["/".join(fmt(x, ".0f") for x in r.repeats) for r in results]),
        row("enriched outputs/s", [fmt(r.outputs_per_s, ".0f") for r in results]),
        row("bench publish time, s", [fmt(r.publish_s or None, ".2f") for r in results]),
        row("last output at, s", [r.last_output for r in results]),
        row("all docs stored at, s", [r.docs_done for r in results]),
        row("every symbol's last quote in cache at, s", [r.cache for r in results]),
        row("completion (last of the above), s", [fmt(r.end, ".2f") for r in results]),
        row("outputs received/expected", [r.outputs for r in results]),
        row("docs stored/expected", [r.docs for r in results]),
        row("latency p50, ms", [fmt(percentile(r.latencies, 0.5)) for r in results]),
        row("latency p99, ms", [fmt(percentile(r.latencies, 0.99)) for r in results]),
        row("latency max, ms", [fmt(r.latencies[-1] if r.latencies else None) for r in results]),
        row("consumer CPU s / 1k msgs (process tree)", [per_k(r, r.cpu) for r in results]),
        row("consumer CPU, % of one core till completion", [busy(r) for r in results]),
        row("redis-server CPU s / 1k msgs", [per_k(r, r.server_cpu[0]) for r in results]),
        row("SecantusDB CPU s / 1k msgs", [per_k(r, r.server_cpu[1]) for r in results]),
        row("bench process CPU s / 1k msgs", [per_k(r, r.bench_cpu) for r in results]),
        row("all of the above, CPU s / 1k msgs", [per_k(r, r.all_cpu) for r in results]),
        row(f"machine busy, % of its {os.cpu_count()} cores till completion", [machine(r) for r in results]),
        memory_row([r.memory for r in results]),
    ]
    print_table(title, [r.name for r in results], rows)
    for r in results:
        for note in r.notes:
            print(f"  [{r.name}] {note}")
    by = {r.name: r.rate for r in results}
    for num, den, label in (
        ("3 enricher", "2 mongo ceiling", "(3) enricher persist / SecantusDB ceiling"),
        ("3 enricher", "2b mongo 3 at once", "(3) enricher persist / SecantusDB, 3 inserts at once"),
        ("2b mongo 3 at once", "2 mongo ceiling", "(2b) 3 inserts at once / one at a time"),
        ("4 no-persist", "1 bare", "(4) enricher no-persist / bare consumer"),
    ):
        a, b = by.get(num), by.get(den)
        if a and b:
            print(f"  ratio {label}: {a:.0f} / {b:.0f} = {a / b:.2f}")
    # On a machine the run keeps busy, throughput follows the CPU every process spends per message.
    cpu = {r.name: r.all_cpu / r.messages for r in results if r.all_cpu}
    if "4 no-persist" in cpu and "1 bare" in cpu:
        bare, enriched = cpu["1 bare"] * 1e6, cpu["4 no-persist"] * 1e6
        label = "CPU of all processes per message, bare / no-persist"
        print(f"  {label}: {bare:.1f} / {enriched:.1f} us = {bare / enriched:.2f}")
