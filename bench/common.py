"""Shared helpers of the benchmarks: /proc sampling, subprocess control, the output listener.

CPU and memory come from /proc directly (no psutil: it is not a declared dependency).
The process tree is found from each process's parent id in /proc/<pid>/stat, since this
kernel has no /proc/<pid>/task/<tid>/children.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import os
import platform
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.cache import ENRICHED_CHAIN, ENRICHED_UNDERLYING

Key = tuple[str, str]  # (product, timestamp as sent)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def machine_header(redis_binary: str) -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        [redis_binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    try:
        secantus = importlib.metadata.version("SecantusDB")
    except importlib.metadata.PackageNotFoundError:
        secantus = "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), cpu={model}",
        f"python:  {platform.python_version()} ({platform.python_implementation()})",
        f"redis:   {redis_version}",
        f"mongodb: SecantusDB {secantus} (:memory:)",
        f"load average at start: {load}",
    ]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # fields from the 3rd (state) on


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    return children


def process_tree(root: int) -> list[int]:
    children, tree, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: RSS with each shared page split between the processes mapping it.

    Summing RSS over a process tree counts the pages its processes share once per process:
    the interpreter and the libraries they all map from the same files, and what a forked
    child still shares with its parent (the pool's forkserver and worker). Summing PSS counts
    each page once. ~0.2 ms a read, against 0.015 ms for VmRSS.
    """
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return rss_kib(pid)  # a kernel without smaps_rollup (< 4.14): no better figure


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the bench's own process while a consumer runs. The
    listener stamps each output as this process's event loop reads it, so a pause here is
    latency charged to the consumer: in one traced 31-s run at the real pace the bench
    collected 154 times, 13 of them 0.48-0.97 ms (generation 1) and one 12.0 ms (generation 2).
    Reference counting still frees everything else; the cycles wait for the end of the run."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class TreeSampler:
    """CPU seconds and peak memory of a process tree since `mark()`; exited children keep their last CPU.

    Peaks, each on its own: RSS summed over the tree, PSS summed over the tree (`pss_kib`),
    and the root's own RSS.
    """

    def __init__(self, root: int, rescan_every: float = 1.0) -> None:
        self.root = root
        self._lock = threading.Lock()  # run() samples in a thread, while the caller may read or mark
        self._rescan_every = rescan_every
        self._pids: list[int] = []
        self._scanned_at = 0.0
        self._cpu: dict[int, float] = {}
        self._base: dict[int, float] = {}
        self.peak_rss_kib = self.peak_pss_kib = self.peak_root_kib = 0

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self._scanned_at >= self._rescan_every:
            self._pids, self._scanned_at = process_tree(self.root), now
        rss = pss = 0
        for pid in self._pids:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self._cpu[pid] = seconds
                rss += rss_kib(pid)
                pss += pss_kib(pid)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.peak_root_kib = max(self.peak_root_kib, rss_kib(self.root))

    def mark(self) -> None:
        with self._lock:
            self._scanned_at = 0.0
            self._sample()
            self._base = dict(self._cpu)
            self.peak_rss_kib = self.peak_pss_kib = self.peak_root_kib = 0
            self._sample()

    def memory(self) -> tuple[int, int, int]:
        """(peak tree RSS, peak tree PSS, peak root RSS), KiB."""
        with self._lock:
            return self.peak_rss_kib, self.peak_pss_kib, self.peak_root_kib

    def cpu_since_mark(self) -> float:
        with self._lock:
            self._scanned_at = 0.0
            self._sample()
            return sum(seconds - self._base.get(pid, 0.0) for pid, seconds in self._cpu.items())

    def pids(self) -> list[int]:
        return process_tree(self.root)

    async def run(self, interval: float = 0.1) -> None:
        """Sample every `interval` s, in a thread: one sample of enricher's four processes reads
        their /proc files for ~2 ms (median; 3.6 at most), and on the event loop that held up
        the bench's publisher and listener, and with them the latencies it was measuring."""
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM, wait, SIGKILL; then SIGKILL any descendant the process left behind."""
    if proc.poll() is not None:
        return proc.returncode
    descendants = [pid for pid in process_tree(proc.pid) if pid != proc.pid]
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in descendants:
        if _stat_fields(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return proc.returncode


async def wait_subscribed(
    redis: Redis,
    channels: Sequence[str],
    baseline: dict[str, int],
    proc: subprocess.Popen[bytes],
    within: float,
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited with status {proc.returncode} before subscribing")
        counts = await subscriber_counts(redis, channels)
        if all(counts[c] >= baseline.get(c, 0) + 1 for c in channels):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"consumer not subscribed to {list(channels)} within {within:.0f} s")


async def subscriber_counts(redis: Redis, channels: Sequence[str]) -> dict[str, int]:
    pairs = await redis.pubsub_numsub(*channels)
    return {(c.decode() if isinstance(c, bytes) else str(c)): int(n) for c, n in pairs}


def output_key(data: bytes) -> Key:
    doc = orjson.loads(data)
    return str(doc["product"]), str(doc["timestamp"])


class Listener:
    """Records the arrival time of every enriched output, on its own connection."""

    channels = (ENRICHED_UNDERLYING, ENRICHED_CHAIN)

    def __init__(self, url: str) -> None:
        self._redis = Redis.from_url(url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self.arrivals: list[tuple[float, str, bytes]] = []
        self.counts = dict.fromkeys(self.channels, 0)
        self.expected = dict.fromkeys(self.channels, 0)
        self.complete = asyncio.Event()
        self.failed: str | None = None  # why the listener stopped, if it did (e.g. cut off by Redis)

    async def start(self) -> None:
        await self._pubsub.subscribe(*self.channels)
        while any(n < 1 for n in (await subscriber_counts(self._redis, self.channels)).values()):
            await self._pubsub.get_message(timeout=0.05)

    def reset(self, expected_ticks: int, expected_chains: int) -> None:
        self.arrivals, self.counts = [], dict.fromkeys(self.channels, 0)
        self.complete.clear()
        self.expect(expected_ticks, expected_chains)

    def expect(self, ticks: int, chains: int) -> None:
        self.expected = {ENRICHED_UNDERLYING: ticks, ENRICHED_CHAIN: chains}
        self._check()

    def _check(self) -> None:
        if all(self.counts[c] >= self.expected[c] for c in self.channels):
            self.complete.set()

    async def run(self) -> None:
        try:
            while True:
                message = await self._pubsub.get_message(timeout=None)
                if message is None or message["type"] != "message":
                    continue
                channel = message["channel"].decode()
                self.arrivals.append((time.perf_counter(), channel, message["data"]))
                self.counts[channel] += 1
                self._check()
        except RedisError as exc:  # outputs published from now on are lost to the benchmark
            self.failed = f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py
        await self._redis.aclose()


def latencies_ms(arrivals: Iterable[tuple[float, str, bytes]], sent: dict[Key, float]) -> tuple[list[float], int]:
    """Arrival minus publish time per matched output, sorted; and how many outputs matched nothing."""
    out, unmatched, seen = [], 0, set()
    for at, _, data in arrivals:
        key = output_key(data)
        if key in sent and key not in seen:
            seen.add(key)
            out.append((at - sent[key]) * 1000.0)
        else:
            unmatched += 1
    return sorted(out), unmatched


def percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(title: str, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> None:
    width = max([len(name) for name, _ in rows] + [len(title)])
    cells = [max([len(col)] + [len(r[1][i]) for r in rows]) for i, col in enumerate(columns)]
    print(f"\n{title:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, cells, strict=True)))
    print("-" * (width + sum(w + 2 for w in cells)))
    for name, values in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, cells, strict=True)))


QUEUES = ("underlying", "option_quote", "option_chain")  # short channel names, as queue_gauges keys them


def queue_gauges(port: int, *names: str) -> list[dict[str, float]]:
    """enricher's per-queue gauges `names` from one scrape of its /metrics, each by short
    channel name ("underlying", ...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, dict[str, float]] = {name: {} for name in names}
    for family in text_string_to_metric_families(text):
        if family.name in values:
            for sample in family.samples:
                values[family.name][sample.labels["channel"].split(":")[1]] = sample.value
    return [values[name] for name in names]


def memory_row(peaks: Sequence[tuple[int, int, int] | None]) -> tuple[str, list[str]]:
    """The report row of `TreeSampler.memory()` peaks, in MiB."""
    return (
        "peak MiB: tree RSS summed / tree PSS / daemon RSS",
        ["-" if p is None else " / ".join(f"{kib / 1024:.0f}" for kib in p) for p in peaks],
    )
