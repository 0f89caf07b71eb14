"""Loaded by every Python process started with bench/tracing on PYTHONPATH (bench.chain_second
puts it there for the daemon only): when BENCH_TRACE_OUT is set, it records each
`Pipeline.handle` call of the process (channel, start, end, messages, first and last arrival,
all in time.perf_counter(), the system-wide monotonic clock the bench stamps with too, and an
id) and each step inside one (parse, claim, model, state, write; and the surface writes, which
run outside any batch), and each cyclic garbage collection (as a step "gc0", "gc1" or "gc2", in
the batch it interrupted, if any), and writes them as JSON to BENCH_TRACE_OUT.<pid> at exit.
Nothing else changes; without the variable it does nothing."""

from __future__ import annotations

import atexit
import contextvars
import functools
import gc
import importlib
import inspect
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

Row = tuple[str, float, float, int, float, float, int]
Step = tuple[int, str, float, float]  # batch id (-1: outside any batch), step, start, end
# (module, class, method, step): what a batch does, in order.
STEPS = (
    ("enricher.pipeline", "Pipeline", "_parse", "parse"),
    ("enricher.idempotency", "Idempotency", "claim", "claim"),
    ("enricher.pool", "AnalyticsPool", "analyse_chains", "model"),
    ("enricher.state", "MarketState", "ticks", "state"),
    ("enricher.state", "MarketState", "quotes", "state"),
    ("enricher.state", "MarketState", "chains", "state"),
    ("enricher.pipeline", "Pipeline", "_write_with_retry", "write"),
    ("enricher.pipeline", "Pipeline", "write_surfaces", "surfaces"),
)


def _install(out: str) -> None:
    from enricher.pipeline import Pipeline  # noqa: PLC0415  # only in a traced process
    from enricher.source import RawMessage  # noqa: PLC0415

    handle = Pipeline.handle
    rows: list[Row] = []
    steps: list[Step] = []
    batch: contextvars.ContextVar[int] = contextvars.ContextVar("batch", default=-1)
    idents = itertools.count()
    wall_minus_perf = time.time() - time.perf_counter()  # RawMessage.received_at is wall time

    async def traced(self: Pipeline, channel: str, messages: Sequence[RawMessage]) -> list[str]:
        started, ident = time.perf_counter(), next(idents)
        token = batch.set(ident)
        try:
            return await handle(self, channel, messages)
        finally:
            batch.reset(token)
            received = [message.received_at - wall_minus_perf for message in messages]
            rows.append((channel, started, time.perf_counter(), len(messages), min(received), max(received), ident))

    def timed(method: Callable[..., Any], step: str) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def awaited(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await method(*args, **kwargs)
                finally:
                    steps.append((batch.get(), step, started, time.perf_counter()))

            return awaited

        @functools.wraps(method)
        def called(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                steps.append((batch.get(), step, started, time.perf_counter()))

        return called

    for module, owner, name, step in STEPS:
        cls = getattr(importlib.import_module(module), owner)
        setattr(cls, name, timed(getattr(cls, name), step))

    def dump() -> None:
        if rows:  # not the pool's processes, which handle nothing
            with open(f"{out}.{os.getpid()}", "w", encoding="utf-8") as file:
                json.dump({"batches": rows, "steps": steps}, file)

    collecting = [0.0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            steps.append((batch.get(), f"gc{info['generation']}", collecting[0], time.perf_counter()))

    gc.callbacks.append(collected)
    setattr(Pipeline, "handle", traced)  # noqa: B010  # mypy: assigning to a method
    atexit.register(dump)


def _main(environ: Any) -> None:
    out = environ.get("BENCH_TRACE_OUT")
    if out:
        _install(out)


_main(os.environ)
