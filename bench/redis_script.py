"""Redis's own time in enricher's two scripts for one quote batch, and where it goes.

    .venv/bin/python -m bench.redis_script                 # 500 quotes, 100 calls a variant, 2 rounds
    .venv/bin/python -m bench.redis_script --quotes 200 --calls 300

In a burst the bench's publisher and listener, Redis and enricher share the machine's cores,
so Redis's CPU per message counts against enricher's throughput as much as enricher's own
(bench.throughput prints both). This builds one batch of synthetic quotes as the daemon does
with persistence off (parse, `MarketState.quotes`, the idempotency keys), then calls, against a
private redis-server, the claim script and the cache write script, and variants of the write
with a part taken out. Redis's time per call is `INFO commandstats` (EVALSHA's usec per call,
which includes the commands the script calls); the client's is this process's CPU per call.
The difference between the write and a variant is what that part costs Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import orjson
from redis.asyncio import Redis

from bench.common import machine_header
from enricher import cache
from enricher.embedded import RedisServer
from enricher.feed.synthetic import SyntheticFeed
from enricher.idempotency import DONE_LUA, Idempotency, mark_key
from enricher.messages import parse
from enricher.metrics import Metrics
from enricher.records import OPTION_QUOTE
from enricher.settings import Settings
from enricher.source import RawMessage
from enricher.state import MarketState

DONE_TTL = 3600


def quote_batch(count: int) -> tuple[cache.Outputs, list[str]]:
    """The outputs and idempotency keys of `count` synthetic quotes, persistence off."""
    settings = Settings(persist=False)
    state = MarketState(settings, Metrics())
    feed = SyntheticFeed(seed=1, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=10))
    payloads: list[bytes] = []
    while len(payloads) < count:
        payloads += [payload for channel, payload in feed.loop() if channel == OPTION_QUOTE]
    items = []
    for payload in payloads[:count]:
        record = parse(OPTION_QUOTE, payload, feed_tz=settings.tz)
        items.append((record, RawMessage(OPTION_QUOTE, payload, 0.0), mark_key("quote", record.identity)))
    return state.quotes(items, datetime.now(UTC)).outputs, [key for _, _, key in items]


def _newer(outputs: cache.Outputs, suffix: str) -> cache.Outputs:
    """`outputs` with every stamp followed by `suffix`: newer than the same without it."""
    newer = cache.Outputs()
    for key, (value, ttl, stamp) in outputs.keys.items():
        newer.set(key, value, ttl, stamp + suffix)
    return newer


def without(script: str, *parts: tuple[str, str]) -> str:
    """The write script with each `old` replaced by `new`; every one must be there."""
    for old, new in parts:
        if old not in script:
            raise SystemExit(f"the write script no longer contains {old!r}: update bench/redis_script.py")
        script = script.replace(old, new)
    return script


def variants() -> dict[str, str]:
    write = cache._WRITE  # the daemon's own script, taken apart here
    done_loop = DONE_LUA.strip()
    return {
        "write, no done marks": without(write, (done_loop, "")),
        "write, no stamps": without(
            write,
            ("local current = redis.call('GET', stamp_key)", "local current = false"),
            ("redis.call('SET', stamp_key, s[4], 'EX', s[3])", ""),
        ),
        "write, no redis.call at all": without(
            write,
            (done_loop, ""),
            ("local current = redis.call('GET', stamp_key)", "local current = false"),
            ("redis.call('SET', stamp_key, s[4], 'EX', s[3])", ""),
            ("redis.call('SET', s[1], value(s[2]), 'EX', s[3])", ""),
        ),
        "cjson.decode of the argument only": "local batch = cjson.decode(ARGV[1]) return 0",
    }


async def timed(redis: Redis, calls: int, call: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    """(Redis's µs per EVALSHA, this process's CPU µs per call) over `calls` calls, from an
    empty Redis: what one case leaves (stamps, marks) must not change the next one's work."""
    await redis.flushall()
    await call(-1)  # loads the script
    await redis.config_resetstat()
    started = time.process_time()
    for i in range(calls):
        await call(i)
    client = (time.process_time() - started) / calls * 1e6
    stats = await redis.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec_per_call"]), client


async def run(count: int, calls: int, rounds: int) -> None:
    outputs, keys = quote_batch(count)
    with RedisServer() as server:
        print("\n".join(machine_header(server.binary)))
        print(f"one batch: {count} quotes, {len(outputs.keys)} keys (a symbol quoted twice is written once)\n")
        redis = Redis.from_url(server.url)
        idempotency = Idempotency(redis, inflight_ttl=60.0, done_ttl=DONE_TTL)
        writer = cache.Cache(redis)
        sets = [(key, value.decode(), ttl, stamp) for key, (value, ttl, stamp) in outputs.keys.items()]
        argument = orjson.dumps((sets, [], [], keys, DONE_TTL))
        scripts = {name: redis.register_script(source) for name, source in variants().items()}
        table: dict[str, list[tuple[float, float]]] = {}
        # Each call's values a little newer than the last's, so that every one is written, as
        # a burst's are (a stamp equal to the one a key holds is refused when claiming).
        later = {i: _newer(outputs, f"{i + 1:06d}") for i in range(-1, calls)}

        def variant(name: str) -> Callable[[int], Awaitable[object]]:
            return lambda _: scripts[name](keys=[], args=[argument])

        cases: dict[str, Callable[[int], Awaitable[object]]] = {
            # Fresh keys each call, so that every claim is a new one, as in a burst.
            "claim (SET NX PX a key)": lambda i: idempotency.claim([f"{key}:{i}" for key in keys]),
            "write, as the daemon sends it": lambda i: writer.write(later[i], keys, DONE_TTL),
            # Quotes without persistence: the claims made in the write, as done, instead.
            "write claiming (no claim call before)": lambda i: writer.write_claiming(
                later[i], [f"{key}:{i}" for key in keys], DONE_TTL
            ),
        } | {name: variant(name) for name in scripts}
        for _ in range(rounds):  # round after round, so that noise spreads over all
            for name, call in cases.items():
                table.setdefault(name, []).append(await timed(redis, calls, call))
        await redis.aclose()
    print(f"{'':40s} {'Redis us/call':>14s} {'client CPU us/call':>19s}   (median of {rounds} rounds)")
    for name, runs in table.items():
        server_us = statistics.median([r[0] for r in runs])
        client_us = statistics.median([r[1] for r in runs])
        print(f"{name:40s} {server_us:14.0f} {client_us:19.0f}")
    print("\nwithout persistence a quote batch makes the claim and write calls (ticks and chains still do);")
    print("quotes make the one 'write claiming' call")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.redis_script", description=__doc__)
    parser.add_argument("--quotes", type=int, default=500, help="quotes in the batch (ENRICHER_BATCH_MAX: 500)")
    parser.add_argument("--calls", type=int, default=100, help="calls a variant, a round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(run(args.quotes, args.calls, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
