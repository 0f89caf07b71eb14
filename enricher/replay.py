"""Replaying dead letters through the daemon's own pipeline.

Each record runs through a private `Enricher` whose source never yields, oldest record first.
When that app has stopped (MongoDB flushed, its dead letters written), each replayed record is
settled by one rule, which never loses a message and never multiplies its records:

- if the replay dead-lettered the message again (the pipeline failed it, or MongoDB refused
  it at the flush), the old record and that new one are replaced, atomically, by one merged
  record: the new error, the old `first_seen`, the attempts of both added up;
- else if the outcome was `processed` or `duplicate`, the old record is removed;
- else (the pipeline raised, or its new record could not be written) the old one stays as is.

The merge runs as a Lua script that pushes the merged record only if it removed at least one
of the two, so a purge that races a replay is never undone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from typing import Final

import orjson
import structlog
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.deadletter import DLQ_KEY, DeadLetter, Entry
from enricher.metrics import DUPLICATE, PROCESSED
from enricher.settings import Settings
from enricher.source import RawMessage

log = structlog.get_logger("enricher.replay")
SUCCESS: Final = frozenset((PROCESSED, DUPLICATE))

# KEYS[1] the list; ARGV: the replayed record, the dead letter its replay wrote, their merge.
MERGE_SCRIPT: Final = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1]) + redis.call('LREM', KEYS[1], 1, ARGV[2])
if removed > 0 then redis.call('LPUSH', KEYS[1], ARGV[3]) end
return removed
"""


class IdleSource:
    """A source that is ready at once and never yields: replay feeds the pipeline itself."""

    redelivers = False

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ready.set()
        self._stopped = asyncio.Event()

    async def messages(self) -> AsyncIterator[RawMessage]:
        await self._stopped.wait()
        nothing: tuple[RawMessage, ...] = ()
        for message in nothing:  # an async generator that ends at stop()
            yield message

    async def stop(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        return None


async def replay(settings: Settings, redis: Redis, entries: Sequence[Entry], batch_size: int) -> int:
    """Replay `entries` (oldest first) and settle each by the module's rule; return how many succeeded."""
    outcomes: list[str] = []
    letters: list[DeadLetter] = []
    if entries:
        # Its own port-less app: it must not take the running daemon's HTTP port.
        app = Enricher(dataclasses.replace(settings, http_port=0), source=IdleSource())
        await app.start()
        # Every dead letter the replay writes, to pair it with the record it came from.
        app.dead_letters.observers.append(letters.append)
        try:
            outcomes = await _run(app, entries, max(1, batch_size))
        finally:
            await app.stop()
    return await _settle(redis, entries, outcomes, letters)


async def _run(app: Enricher, entries: Sequence[Entry], batch_size: int) -> list[str]:
    outcomes: list[str] = []
    start = 0
    while start < len(entries):
        channel = entries[start].channel
        stop = start + 1
        while stop < len(entries) and stop - start < batch_size and entries[stop].channel == channel:
            stop += 1
        batch = [RawMessage(channel, entry.payload or b"", time.time()) for entry in entries[start:stop]]
        try:
            outcomes += await app.pipeline.handle(channel, batch)
        except Exception:  # a pipeline bug: these records stay as they are
            log.exception("replay_failed", channel=channel, batch=len(batch))
            outcomes += ["error"] * len(batch)
        start = stop
    return outcomes


async def _settle(redis: Redis, entries: Sequence[Entry], outcomes: Sequence[str], letters: list[DeadLetter]) -> int:
    """Apply the module's rule; return how many records were replayed for good."""
    again: defaultdict[tuple[str, bytes], deque[DeadLetter]] = defaultdict(deque)
    for letter in letters:
        again[letter.channel, letter.data].append(letter)
    # Failures first, so that of two identical records the failed one takes the new letter.
    order = sorted(zip(entries, outcomes, strict=True), key=lambda pair: pair[1] in SUCCESS)
    succeeded = 0
    async with redis.pipeline(transaction=False) as pipe:
        for entry, outcome in order:
            new = again.get((entry.channel, entry.payload or b""))
            if new:
                letter = new.popleft()
                pipe.eval(MERGE_SCRIPT, 1, DLQ_KEY, entry.raw, letter.to_json(), _merge(entry, letter))
            elif outcome in SUCCESS:
                succeeded += 1
                pipe.lrem(DLQ_KEY, 1, entry.raw)  # type: ignore[arg-type]  # typed str; bytes go as is
        await pipe.execute()
    return succeeded


def _merge(entry: Entry, letter: DeadLetter) -> bytes:
    attempts = entry.record.get("attempts")
    merged = orjson.loads(
        dataclasses.replace(letter, attempts=letter.attempts + (attempts if type(attempts) is int else 1)).to_json()
    )
    first_seen = entry.record.get("first_seen")
    if isinstance(first_seen, str):  # kept as written: a float round trip could shift it by 1 µs
        merged["first_seen"] = first_seen
    return orjson.dumps(merged)
