"""Loaded by every Python process started with bench/tracing on PYTHONPATH (bench.chain_second
puts it there for the daemon only): when BENCH_TRACE_OUT is set, it records each
`Pipeline.handle` call of the process (channel, start, end, messages, first and last arrival,
all in time.perf_counter(), the system-wide monotonic clock the bench stamps with too) and
writes them as JSON to BENCH_TRACE_OUT.<pid> at exit. Nothing else changes; without the
variable it does nothing."""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Sequence
from typing import Any

Row = tuple[str, float, float, int, float, float]


def _install(out: str) -> None:
    from enricher.pipeline import Pipeline  # noqa: PLC0415  # only in a traced process
    from enricher.source import RawMessage  # noqa: PLC0415

    handle = Pipeline.handle
    rows: list[Row] = []
    wall_minus_perf = time.time() - time.perf_counter()  # RawMessage.received_at is wall time

    async def traced(self: Pipeline, channel: str, batch: Sequence[RawMessage]) -> list[str]:
        started = time.perf_counter()
        try:
            return await handle(self, channel, batch)
        finally:
            received = [message.received_at - wall_minus_perf for message in batch]
            rows.append((channel, started, time.perf_counter(), len(batch), min(received), max(received)))

    def dump() -> None:
        if rows:  # not the pool's processes, which handle nothing
            with open(f"{out}.{os.getpid()}", "w", encoding="utf-8") as file:
                json.dump(rows, file)

    setattr(Pipeline, "handle", traced)  # noqa: B010  # mypy: assigning to a method
    atexit.register(dump)


def _main(environ: Any) -> None:
    out = environ.get("BENCH_TRACE_OUT")
    if out:
        _install(out)


_main(os.environ)
