"""Scale-out: enricher's throughput with 1, 2 and 3 instances on the Redis Streams source.

    .venv/bin/python -m bench.scale                          # bare; persist and no-persist x1-3; 3 rounds, ~90 s
    .venv/bin/python -m bench.scale --modes persist --instances 1 2 --repeat 1
    .venv/bin/python -m bench.scale --scale 3 --repeat 1     # three times the burst, one round
    .venv/bin/python -m bench.scale --logs /tmp/scale-logs   # keep every instance's log file
    .venv/bin/python -m bench.scale --env ENRICHER_GAP_TICK_COUNTER=false   # any setting, every instance

Every scenario runs N `python -m enricher run` subprocesses (ENRICHER_SOURCE=streams, consumer
names i1..iN, one consumer group, ENRICHER_POOL_WORKERS=0, lease TTL 2 s) against one private
redis-server and one SecantusDB (:memory:), both stopped however the run ends. Before each
scenario the instances of the last one are stopped and Redis is flushed (its idempotency marks
and latest:* keys would turn the next burst into duplicates); each scenario has its own stream
prefix (s1:, s2:, ...) and MongoDB database. The bench waits until the partition leases
(`enricher:lease:{group}:{k}`) are held exactly as the assignment (k % N) says, then starts the
clock, XADDs the burst (enricher.bridge.StreamWriter, pipelines of --chunk) and polls:

- complete = every stream's group has delivered up to the last entry written (last-delivered-id
  >= last-generated-id) and has nothing pending (XPENDING 0): every message acknowledged. An
  entry is acknowledged only once its results are durable (MongoDB acknowledged them, or with
  persistence off the cache was written), so with persistence on the document counts of
  underlying_ticks, option_quotes and option_chains are taken right then, and must equal the
  input; otherwise the run is marked INCOMPLETE and polling goes on until --timeout.
- input msg/s = messages / (first XADD -> complete); docs/s the same for documents.
- CPU is read from /proc (utime + stime, bench/common.py) per instance, for redis-server,
  SecantusDB and this process, from the first XADD to completion; peak RSS is sampled every
  0.1 s.
- msgs share: the messages in the partitions an instance holds. The burst's 8 products fall
  into only a few of the 16 partitions, so the split is uneven; "ideal speedup" is 1 / the
  busiest instance's share, the most N instances can gain on this input on any machine.

Under the tables, each instance's log (warning and above) is summarised by event, and anything
unusual is noted: an incomplete run, documents missing, leases that changed hands mid-run,
dead letters, an instance that exited.

The bare reference (bench/bare.py: a pub/sub consumer that parses and republishes, the least
a Python consumer does per message) runs on the same Redis in the same run, for scale.

Reading it: compare input msg/s along a mode; "speedup" is against 1 instance of the same
mode. The paragraph printed under the tables says what bounds the gain on this machine.
A benchmark, not a test: nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pymongo.errors import PyMongoError
from redis.asyncio import Redis

from bench import harness
from bench.common import CLOCK_TICK, TreeSampler, cpu_seconds, fmt, print_table, stop_process
from bench.report import Result
from bench.throughput import Workload, make_workload, run_consumer
from enricher.bridge import StreamWriter
from enricher.leases import assignment
from enricher.loop import run
from enricher.partitions import partition_of, product_of, streams_of
from enricher.store import CHAINS, TICKS

T = TypeVar("T")
GROUP = "bench"
MODES = ("persist", "nopersist")
LABEL = {"persist": "persist", "nopersist": "no-persist"}


@dataclass
class Instance:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    sampler: TreeSampler
    partitions: list[int] = field(default_factory=list)
    messages: int = 0  # in the partitions it held when the clock started
    loaded: int = 0  # how many of those partitions the burst writes to
    cpu: float | None = None
    rss_kib: int = 0

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").splitlines()
        return []


@dataclass
class Scenario:
    mode: str
    n: int
    messages: int
    docs_expected: int
    prefix: str  # of this scenario's streams
    db: str  # this scenario's MongoDB database
    instances: list[Instance] = field(default_factory=list)
    balanced_s: float | None = None  # spawn -> leases split as assigned
    write_s: float | None = None  # first XADD -> last XADD's reply
    acked_at: float | None = None  # first XADD -> the poll that saw everything acknowledged
    end: float | None = None  # acked_at, once the documents are confirmed (persist)
    docs: dict[str, int] = field(default_factory=dict)
    pending: int = 0  # at the end: entries delivered, not acknowledged
    undelivered: int = 0  # at the end: entries never delivered
    outputs: str = "-"
    server_cpu: tuple[float | None, float | None] = (None, None)
    bench_cpu: float | None = None
    machine_cpu: float | None = None  # every process on the machine, /proc/stat
    notes: list[str] = field(default_factory=list)
    repeats: list[float | None] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{LABEL[self.mode]} x{self.n}"

    @property
    def rate(self) -> float | None:
        return None if not self.end else self.messages / self.end

    @property
    def docs_rate(self) -> float | None:
        if not self.end or self.mode != "persist":
            return None
        return sum(self.docs.values()) / self.end

    @property
    def instance_cpu(self) -> float | None:
        values = [i.cpu for i in self.instances]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def busiest_share(self) -> float:
        return max((i.messages for i in self.instances), default=0) / max(self.messages, 1)


def machine_cpu_seconds() -> float:
    """CPU seconds every process of the machine has used (user, nice, system, irq, softirq, steal)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
        return (user + nice + system + irq + softirq + steal) / CLOCK_TICK
    return 0.0


# --- Redis: leases and stream progress ---------------------------------------------------


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _get(record: dict[Any, Any], key: str) -> Any:
    return record.get(key, record.get(key.encode()))


def _entry_id(value: object) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


async def lease_owners(redis: Redis, partitions: int) -> dict[int, str]:
    values = await redis.mget([f"enricher:lease:{GROUP}:{k}" for k in range(partitions)])
    return {k: _text(v) for k, v in enumerate(values) if v is not None}


async def wait_balanced(
    redis: Redis, names: list[str], partitions: int, instances: list[Instance], within: float
) -> dict[int, str]:
    """Until every lease is held by the instance the assignment gives it (k % N over sorted names)."""
    want = {k: name for name in names for k in assignment(sorted(names), partitions, name)}
    deadline = time.monotonic() + within
    owners: dict[int, str] = {}
    while time.monotonic() < deadline:
        for instance in instances:
            if instance.proc.poll() is not None:
                tail = "\n".join(instance.log_lines()[-15:])
                raise RuntimeError(f"{instance.name} exited with {instance.proc.returncode} at start-up:\n{tail}")
        owners = await lease_owners(redis, partitions)
        if owners == want:
            return owners
        await asyncio.sleep(0.05)
    raise RuntimeError(f"leases not split as assigned within {within:.0f} s: {owners}")


async def last_generated(redis: Redis, streams: list[str]) -> dict[str, tuple[int, int]]:
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_stream(stream)
        replies = await pipe.execute()
    return {s: _entry_id(_get(r, "last-generated-id")) for s, r in zip(streams, replies, strict=True)}


async def progress(redis: Redis, last: dict[str, tuple[int, int]]) -> tuple[int, dict[str, tuple[int, int] | None]]:
    """Pending entries over all streams, and each stream's last-delivered-id (None: no group)."""
    streams = list(last)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        replies = await pipe.execute()
    pending, delivered = 0, dict[str, tuple[int, int] | None]()
    for stream, groups in zip(streams, replies, strict=True):
        ours = next((g for g in groups if _text(_get(g, "name")) == GROUP), None)
        if ours is None:
            delivered[stream] = None
            continue
        pending += int(_get(ours, "pending"))
        delivered[stream] = _entry_id(_get(ours, "last-delivered-id"))
    return pending, delivered


async def undelivered(redis: Redis, last: dict[str, tuple[int, int]]) -> int:
    """Entries after each group's last-delivered-id (only for the report of an incomplete run)."""
    _, delivered = await progress(redis, last)
    total = 0
    for stream, at in delivered.items():
        start = "-" if at is None else f"({at[0]}-{at[1]}"
        total += len(await redis.xrange(stream, min=start, max="+") or [])
    return total


# --- one scenario --------------------------------------------------------------------------


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _instance_env(ctx: harness.Context, mode: str, name: str, prefix: str, db: str, partitions: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHER_")}
    env |= {
        "REDIS_URL": ctx.redis_server.url,
        "MONGO_URL": ctx.mongo_server.url,
        "ENRICHER_MONGO_DB": db,
        "ENRICHER_PERSIST": "true" if mode == "persist" else "false",
        "ENRICHER_SOURCE": "streams",
        "ENRICHER_CONSUMER": name,
        "ENRICHER_STREAM_PREFIX": prefix,
        "ENRICHER_STREAM_GROUP": GROUP,
        "ENRICHER_STREAM_PARTITIONS": str(partitions),
        "ENRICHER_STREAM_LEASE_TTL": "2",
        "ENRICHER_HTTP_PORT": "0",
        "ENRICHER_POOL_WORKERS": "0",
        "ENRICHER_LOG_LEVEL": "warning",
    }
    return env | ctx.extra_env


async def run_streams(
    ctx: harness.Context, mode: str, n: int, load: Workload, per_partition: Counter[int], args: argparse.Namespace
) -> Scenario:
    number = next(ctx.serial)
    prefix, db = f"s{number}:", f"scale_{number:02d}_{mode}{n}"
    streams = [s for k in range(args.partitions) for s in streams_of(prefix, k, args.partitions)]
    docs_expected = sum(load.counts.values()) if mode == "persist" else 0
    result = Scenario(mode, n, len(load.messages), docs_expected, prefix, db)
    await ctx.redis.flushall()  # the last scenario's idempotency marks, latest:* keys and leases
    command = [sys.executable, "-m", "enricher", "run"]
    names = [f"i{j}" for j in range(1, n + 1)]
    spawned = time.perf_counter()
    try:
        for name in names:
            log = ctx.logs / f"{number:02d}-{mode}{n}-{name}.log"
            proc = _spawn(command, _instance_env(ctx, mode, name, prefix, db, args.partitions), log)
            result.instances.append(Instance(name, proc, log, TreeSampler(proc.pid)))
        owners = await wait_balanced(ctx.redis, names, args.partitions, result.instances, within=60.0)
        result.balanced_s = time.perf_counter() - spawned
        for instance in result.instances:
            instance.partitions = sorted(k for k, owner in owners.items() if owner == instance.name)
            instance.messages = sum(per_partition[k] for k in instance.partitions)
            instance.loaded = sum(1 for k in instance.partitions if per_partition[k])
        await _measure(ctx, result, load, streams, owners, args)
    finally:
        await asyncio.gather(*(asyncio.to_thread(stop_process, i.proc) for i in result.instances))
        if mode == "persist":
            with contextlib.suppress(PyMongoError):
                await ctx.mongo.drop_database(db)
    for instance in result.instances:
        if instance.proc.returncode not in (0, None):
            result.notes.append(f"{instance.name} exited with {instance.proc.returncode}")
        logged = instance.log_lines()  # at warning and above only
        if logged:
            result.notes.append(f"{instance.name} logged {len(logged)} lines: {_log_summary(logged)}")
    return result


def _log_summary(lines: list[str]) -> str:
    """Counts by (level, event) of the JSON lines, and the last line that is not JSON (a traceback's)."""
    events: Counter[str] = Counter()
    other: list[str] = []
    for line in lines:
        try:
            record = orjson.loads(line)
            events[f"{record.get('level', '?')} {record.get('event', '?')}"] += 1
        except (orjson.JSONDecodeError, AttributeError):
            other.append(line)
    parts = [f"{name} x{count}" for name, count in events.most_common()]
    if other:
        parts.append(f"{len(other)} other lines, last: {other[-1][:300]}")
    return ", ".join(parts)


async def _measure(
    ctx: harness.Context,
    result: Scenario,
    load: Workload,
    streams: list[str],
    owners: dict[int, str],
    args: argparse.Namespace,
) -> None:
    ctx.listener.reset(load.counts[TICKS], load.counts[CHAINS])
    redis_cpu, mongo_cpu = ctx.server_samplers()
    samplers = [i.sampler for i in result.instances]
    for sampler in (*samplers, redis_cpu, mongo_cpu):
        sampler.mark()
    own = cpu_seconds(os.getpid()) or 0.0
    machine = machine_cpu_seconds()
    sampling = [asyncio.create_task(s.run()) for s in samplers]
    writer = StreamWriter(ctx.redis, result.prefix, args.partitions, 1_000_000)
    moved = False
    try:
        start = time.perf_counter()
        for i in range(0, len(load.messages), args.chunk):
            await writer.write(load.messages[i : i + args.chunk])
        result.write_s = time.perf_counter() - start
        last = await last_generated(ctx.redis, streams)
        deadline, count_at = time.monotonic() + ctx.timeout, 0.0
        while time.monotonic() < deadline:
            now = time.perf_counter()
            pending, delivered = await progress(ctx.redis, last)
            moved = moved or await lease_owners(ctx.redis, args.partitions) != owners
            caught_up = all(d is not None and d >= last[s] for s, d in delivered.items())
            if result.acked_at is None and pending == 0 and caught_up:
                result.acked_at = now - start
            if result.acked_at is not None:
                if result.mode != "persist":
                    result.end = result.acked_at
                elif time.monotonic() >= count_at:  # counting scans: at most twice a second
                    count_at = time.monotonic() + 0.5
                    result.docs = await _count(ctx, result.db)
                    if sum(result.docs.values()) >= result.docs_expected:
                        result.end = result.acked_at
            if result.end is not None:
                break
            exited = [i for i in result.instances if i.proc.poll() is not None]
            if exited:
                result.notes.append(f"{', '.join(i.name for i in exited)} exited during the run")
                break
            await asyncio.sleep(args.poll)
        for instance in result.instances:
            instance.cpu = instance.sampler.cpu_since_mark()
            instance.rss_kib = instance.sampler.peak_rss_kib
        result.server_cpu = (redis_cpu.cpu_since_mark(), mongo_cpu.cpu_since_mark())
        result.bench_cpu = (cpu_seconds(os.getpid()) or 0.0) - own
        result.machine_cpu = machine_cpu_seconds() - machine
    finally:
        for task in sampling:
            task.cancel()
    await _finish(ctx, result, last, moved)


async def _count(ctx: harness.Context, db: str) -> dict[str, int]:
    return {name: await ctx.mongo[db][name].count_documents({}) for name in harness.COLLECTIONS}


async def _finish(ctx: harness.Context, result: Scenario, last: dict[str, tuple[int, int]], moved: bool) -> None:
    with contextlib.suppress(TimeoutError):  # outputs are published before the ack; allow for delivery
        await asyncio.wait_for(ctx.listener.complete.wait(), 1.0)
    got, want = sum(ctx.listener.counts.values()), sum(ctx.listener.expected.values())
    result.outputs = f"{got}/{want}"
    result.pending, _ = await progress(ctx.redis, last)
    result.undelivered = await undelivered(ctx.redis, last) if result.end is None else 0
    if result.end is None:
        result.notes.append(
            f"INCOMPLETE after {ctx.timeout:.0f} s: {result.pending} entries pending, {result.undelivered} undelivered"
        )
    if result.mode == "persist" and result.end is None:
        result.docs = await _count(ctx, result.db)
    if result.mode == "persist" and sum(result.docs.values()) != result.docs_expected:
        shown = ", ".join(f"{k}={v}" for k, v in result.docs.items())
        result.notes.append(f"documents {shown}, expected {result.docs_expected} in all")
    if moved:
        result.notes.append("partition leases changed hands during the run (msgs shares are those at the start)")
    if ctx.listener.failed:
        result.notes.append(f"the listener lost its connection: {ctx.listener.failed}")
    dlq = await harness.dlq_length(ctx.redis)
    if dlq:
        result.notes.append(f"dlq:enrichment has {dlq} records")


# --- the report -----------------------------------------------------------------------------


def _per_k(seconds: float | None, messages: int) -> str:
    return fmt(None if seconds is None or not messages else seconds / (messages / 1000), ".3f")


def report(title: str, bare: Result | None, results: Sequence[Scenario]) -> None:
    first = {r.mode: r.rate for r in results if r.n == 1}
    columns = (["bare pub/sub"] if bare else []) + [r.name for r in results]

    def row(label: str, bare_value: str, values: list[str]) -> tuple[str, list[str]]:
        return label, ([bare_value] if bare else []) + values

    def speedup(r: Scenario) -> str:
        base = first.get(r.mode)
        return fmt(None if not base or r.rate is None else r.rate / base, ".2f")

    def ours(r: Scenario) -> float | None:
        parts = [r.instance_cpu, *r.server_cpu, r.bench_cpu]
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    def busy(r: Scenario) -> str:
        cpu = ours(r)
        return fmt(None if cpu is None or not r.end else cpu / r.end, ".2f")

    def others(r: Scenario) -> str:
        cpu = ours(r)
        if cpu is None or r.machine_cpu is None or not r.end:
            return "-"
        return fmt(max(r.machine_cpu - cpu, 0.0) / r.end, ".2f")

    b = bare
    rows = [
        row(
            "input msg/s (first write -> all acknowledged)",
            fmt(b.rate if b else None, ".0f"),
            [fmt(r.rate, ".0f") for r in results],
        ),
        row(
            "  ... each repeat",
            "/".join(fmt(x, ".0f") for x in b.repeats) if b else "",
            ["/".join(fmt(x, ".0f") for x in r.repeats) for r in results],
        ),
        row("speedup over 1 instance", "", [speedup(r) for r in results]),
        row(
            "ideal speedup (1 / busiest instance's share)",
            "",
            [fmt(1 / r.busiest_share if r.busiest_share else None, ".2f") for r in results],
        ),
        row("docs stored/s", "", [fmt(r.docs_rate, ".0f") for r in results]),
        row("completion, s", fmt(b.end if b else None, ".2f"), [fmt(r.end, ".2f") for r in results]),
        row(
            "bench write (publish) time, s",
            fmt(b.publish_s if b else None, ".2f"),
            [fmt(r.write_s, ".2f") for r in results],
        ),
        row(
            "docs stored/expected",
            "",
            [f"{sum(r.docs.values())}/{r.docs_expected}" if r.mode == "persist" else "-" for r in results],
        ),
        row("entries pending / undelivered at end", "", [f"{r.pending}/{r.undelivered}" for r in results]),
        row("enriched outputs received/expected", b.outputs if b else "", [r.outputs for r in results]),
        row(
            "CPU s per instance",
            fmt(b.cpu if b else None, ".2f"),
            ["/".join(fmt(i.cpu, ".2f") for i in r.instances) for r in results],
        ),
        row(
            "instances' CPU s / 1k msgs (sum)",
            _per_k(b.cpu, b.messages) if b else "",
            [_per_k(r.instance_cpu, r.messages) for r in results],
        ),
        row(
            "redis-server CPU s / 1k msgs",
            _per_k(b.server_cpu[0], b.messages) if b else "",
            [_per_k(r.server_cpu[0], r.messages) for r in results],
        ),
        row("SecantusDB CPU s / 1k msgs", "", [_per_k(r.server_cpu[1], r.messages) for r in results]),
        row(
            "SecantusDB busy, % of one core",
            "",
            [
                fmt(None if r.server_cpu[1] is None or not r.end else 100 * r.server_cpu[1] / r.end, ".0f")
                for r in results
            ],
        ),
        row(
            "bench process CPU s / 1k msgs",
            _per_k(b.bench_cpu, b.messages) if b else "",
            [_per_k(r.bench_cpu, r.messages) for r in results],
        ),
        row("cores busy (all of the above CPU / completion)", "", [busy(r) for r in results]),
        row("cores busy with other processes (/proc/stat)", "", [others(r) for r in results]),
        row(
            "peak RSS per instance, MiB",
            fmt(b.memory[0] / 1024 if b and b.memory else None, ".0f"),
            ["/".join(fmt(i.rss_kib / 1024, ".0f") for i in r.instances) for r in results],
        ),
        row("start-up: spawn -> leases split, s", "", [fmt(r.balanced_s, ".1f") for r in results]),
    ]
    print_table(title, columns, rows)

    per_instance = []
    for r in results:
        for i in r.instances:
            busy_pct = None if i.cpu is None or not r.end else 100 * i.cpu / r.end
            per_instance.append(
                (
                    f"{r.name} {i.name}",
                    [
                        f"{len(i.partitions)} ({i.loaded} with data)",
                        f"{i.messages} ({100 * i.messages / max(r.messages, 1):.0f}%)",
                        fmt(i.cpu, ".2f"),
                        _per_k(i.cpu, i.messages),
                        fmt(busy_pct, ".0f"),
                        fmt(i.rss_kib / 1024, ".0f"),
                    ],
                )
            )
    columns = ["partitions held", "msgs share", "CPU s", "CPU s / 1k own msgs", "% of a core", "peak RSS MiB"]
    print_table("per instance", columns, per_instance)
    if b:
        for note in b.notes:
            print(f"  [bare pub/sub] {note}")
    for r in results:
        for note in r.notes:
            print(f"  [{r.name}] {note}")


def interpretation(load: Workload, per_partition: Counter[int], partitions: int, results: Sequence[Scenario]) -> str:
    cores = len(os.sched_getaffinity(0))
    products = len({product_of(payload) for _, payload in load.messages})
    shares = {r.n: r.busiest_share for r in results}
    ideal = ", ".join(f"x{n} {1 / share:.2f}" for n, share in sorted(shares.items()) if n > 1 and share)
    first = {r.mode: r.rate for r in results if r.n == 1}
    measured = ", ".join(
        f"{LABEL[r.mode]} x{r.n} {r.rate / base:.2f}"
        for r in results
        if r.n > 1 and r.rate and (base := first.get(r.mode))
    )
    mongo = [r.server_cpu[1] / r.end for r in results if r.mode == "persist" and r.end and r.server_cpu[1] is not None]
    secantus = (
        "With persistence on, SecantusDB (a Python server: about one core at most) was busy "
        f"{min(mongo):.0%}-{max(mongo):.0%} of a core: near 100% it is the bottleneck, and more instances only add "
        "clients to it; well below, the time goes to the round trips of the flushes and to waiting for a core. "
        if mongo
        else ""
    )
    return (
        f"How to read it: speedup is input msg/s over 1 instance's in the same mode (measured: {measured or 'n/a'}). "
        f"Three limits lie outside enricher's code. The input: the burst's {products} products hash into "
        f"{len(per_partition)} of the {partitions} partitions and partition k belongs to instance k % N, so the "
        f"busiest instance keeps a large share of the messages; the ideal speedup ({ideal or 'n/a'}) is the most "
        "this input allows on any machine (more products, or a partition count that spreads them evenly, raise it). "
        f"{secantus}The machine: {cores} usable cores run every instance, redis-server, SecantusDB and this bench; "
        f"where 'cores busy' plus 'other processes' approaches {cores}, the CPU is spent and one more instance only "
        "competes for it, so on few cores the gain flattens early (at 2 processes on 2 cores). Instances' CPU s / 1k "
        "msgs that stays about flat from 1 to 3 instances means scale-out adds little per-message cost (each instance "
        "polls its own streams and leases); on a machine with a spare core per instance and a MongoDB that keeps up, "
        "throughput would then grow towards the ideal speedup. A bench write time close to the completion time means "
        "this process's XADDs set the pace. Runs under a second are noisy: use --repeat or --scale to steady them."
    )


# --- the run ------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    env = {"ENRICHER_POOL_WORKERS": "0", "ENRICHER_HTTP_PORT": "0"}  # also for the pub/sub runs
    env |= dict(item.split("=", 1) for item in args.env)
    async with harness.session(args.timeout, env, logs=args.logs, prefix="enricher-scale-") as ctx:
        await _all(ctx, args)
    return 0


async def _all(ctx: harness.Context, args: argparse.Namespace) -> None:
    load = make_workload(args, args.strikes)
    per_partition = Counter(partition_of(product_of(payload), args.partitions) for _, payload in load.messages)
    title = (
        f"streams burst: {args.ticks} ticks + {args.quotes} quotes + {args.chains} chains x {args.strikes} strikes"
        f" = {len(load.messages)} msgs, {sum(len(p) for _, p in load.messages) / 1e6:.1f} MB,"
        f" {args.partitions} partitions"
    )
    print(f"\n{title}  (load avg {os.getloadavg()[0]:.2f})", flush=True)
    bare_runs: list[Result] = []
    runs: dict[tuple[str, int], list[Scenario]] = {(m, n): [] for m in args.modes for n in args.instances}
    for repeat in range(args.repeat):  # round after round, so that noise spreads over all
        tag = f"({repeat + 1}/{args.repeat})"
        if args.bare:
            print(f"  running bare pub/sub {tag} ...", flush=True)
            bare_runs.append(await run_consumer(ctx, "bare", load, args.pipeline))
        for (mode, n), done in runs.items():
            print(f"  running {LABEL[mode]} x{n} {tag} ...", flush=True)
            done.append(await run_streams(ctx, mode, n, load, per_partition, args))
    bare = _median(bare_runs, lambda r: r.rate) if bare_runs else None
    if bare is not None:
        bare.repeats = [r.rate for r in bare_runs]
    results = []
    for scenarios in runs.values():
        chosen = _median(scenarios, lambda r: r.rate)
        chosen.repeats = [r.rate for r in scenarios]
        results.append(chosen)
    report(f"median of {args.repeat} run(s)", bare, results)
    print("\n" + interpretation(load, per_partition, args.partitions, results))


def _median(items: Sequence[T], key: Callable[[T], float | None]) -> T:
    ranked = sorted(items, key=lambda item: key(item) or 0.0)
    return ranked[(len(ranked) - 1) // 2]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=5000)
    parser.add_argument("--quotes", type=int, default=10000)
    parser.add_argument("--chains", type=int, default=250)
    parser.add_argument("--strikes", type=int, default=21)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply --ticks, --quotes and --chains")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3], help="instance counts to run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="persistence on / off")
    parser.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True, help="the bare reference")
    parser.add_argument("--partitions", type=int, default=16, help="ENRICHER_STREAM_PARTITIONS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median of each scenario is shown")
    parser.add_argument("--chunk", type=int, default=1000, help="XADDs per pipeline")
    parser.add_argument("--pipeline", type=int, default=200, help="publishes per pipeline (bare reference)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between completion polls")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for completion")
    parser.add_argument("--logs", help="keep the instances' log files in this directory (default: a temp dir)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every enricher instance, e.g. ENRICHER_BATCH_MAX=1000",
    )
    args = parser.parse_args(argv)
    if args.scale != 1.0:
        args.ticks, args.quotes, args.chains = (round(x * args.scale) for x in (args.ticks, args.quotes, args.chains))
    return args


if __name__ == "__main__":
    try:
        sys.exit(run(main(parse_args())))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: instances and servers stopped", file=sys.stderr)
        sys.exit(130)
