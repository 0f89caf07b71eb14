"""The process pool for CPU-heavy analytics, with an inline path for work too small to ship.

A round trip to a forkserver pool costs about 650 µs, far more than the maths of a 21-strike
chain (PITFALLS.md, "Process pool"). So a batch goes to the pool only when it holds at least
`min_strikes` strikes in all; smaller batches run inline. Size 0 means always inline.
A dead worker breaks the executor for good, so it is rebuilt and the batch retried once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import structlog

from enricher.analytics.expiry import ChainSnapshot
from enricher.analytics.jobs import ChainResults, chain_job, shippable
from enricher.analytics.model import ModelConfig
from enricher.histograms import POOL_BATCH, POOL_BATCH_SIZE
from enricher.metrics import Metrics
from enricher.records import Chain

log = structlog.get_logger("enricher.pool")


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group; the parent decides how the workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm_up() -> int:
    return 0


class AnalyticsPool:
    def __init__(self, workers: int, min_strikes: int, metrics: Metrics) -> None:
        self._workers = workers
        self._min_strikes = min_strikes
        self._metrics = metrics
        self._executor: ProcessPoolExecutor | None = None

    @property
    def executor(self) -> ProcessPoolExecutor | None:
        return self._executor

    async def start(self) -> None:
        if self._workers > 0:
            self._executor = self._build()
            # Spawn the workers now, not on the first chain.
            await asyncio.gather(
                *(asyncio.get_running_loop().run_in_executor(self._executor, _warm_up) for _ in range(self._workers))
            )

    def _build(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_ignore_sigint,
        )

    async def analyse_chains(
        self, chains: Sequence[Chain], previous: Sequence[ChainSnapshot | None], config: ModelConfig
    ) -> ChainResults:
        strikes = sum(chain.strikes.size for chain in chains)
        started = time.perf_counter()
        if self._executor is None or strikes < self._min_strikes:
            result = chain_job(chains, previous, config)
            self._metrics.event("analytics_inline_batches")
        else:
            result = await self._in_pool(shippable(chains), previous, config)
            self._metrics.event("analytics_pool_batches")
        elapsed = time.perf_counter() - started
        self._metrics.histograms.observe(POOL_BATCH, "", elapsed)
        self._metrics.histograms.observe(POOL_BATCH_SIZE, "", len(chains))
        return result

    async def _in_pool(
        self, chains: list[Chain], previous: Sequence[ChainSnapshot | None], config: ModelConfig
    ) -> ChainResults:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            assert self._executor is not None
            try:
                return await loop.run_in_executor(self._executor, chain_job, chains, previous, config)
            except BrokenProcessPool:
                self._metrics.event("pool_rebuilds")
                log.error("pool_broken", attempt=attempt, note="a worker died; rebuilding the pool")
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._build()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
