"""`python -m enricher dlq`: list, count, replay and purge the records in `dlq:enrichment`.

Records are read a page at a time, addressed from the tail of the list: LPUSH never moves
those indexes, so a daemon that dead-letters while we read neither shifts the pages nor adds
to what we see. A record is removed by `LREM 1 <its exact bytes>`, one copy at a time.

Replay runs each record through the daemon's own pipeline, in a private `Enricher` whose
source never yields, oldest record first. When that app has stopped (MongoDB flushed, its
dead letters written), each replayed record is settled by one rule, which never loses a
message and never multiplies its records:

- if the replay dead-lettered the message again (the pipeline failed it, or MongoDB refused
  it at the flush), the old record and that new one are replaced, atomically, by one merged
  record: the new error, the old `first_seen`, the attempts of both added up;
- else if the outcome was `processed` or `duplicate`, the old record is removed;
- else (the pipeline raised, or its new record could not be written) the old one stays as is.

The merge runs as a Lua script that pushes the merged record only if it removed at least one
of the two, so a purge that races a replay is never undone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.deadletter import DLQ_KEY, DeadLetter, DeadLetters, payload_bytes
from enricher.metrics import DUPLICATE, PROCESSED
from enricher.records import CHANNELS
from enricher.redact import redact_text, url_password
from enricher.settings import Settings
from enricher.source import RawMessage

if TYPE_CHECKING:
    from enricher.app import Enricher

log = structlog.get_logger("enricher.dlq")

PAGE: Final = 500
SUCCESS: Final = frozenset((PROCESSED, DUPLICATE))
ERROR_WIDTH: Final = 60
PREVIEW_WIDTH: Final = 80
# KEYS[1] the list; ARGV: the replayed record, the dead letter its replay wrote, their merge.
MERGE_SCRIPT: Final = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1]) + redis.call('LREM', KEYS[1], 1, ARGV[2])
if removed > 0 then redis.call('LPUSH', KEYS[1], ARGV[3]) end
return removed
"""


class IdleSource:
    """A source that is ready at once and never yields: replay feeds the pipeline itself."""

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


@dataclass(frozen=True, slots=True)
class Entry:
    index: int  # position when read; 0 is the newest
    raw: bytes  # the list element exactly as stored, for LREM
    record: dict[str, Any]  # empty when the element is not a JSON object

    @property
    def channel(self) -> str:
        return str(self.record.get("channel", "-"))

    @property
    def error_type(self) -> str:
        return str(self.record.get("error_type", "-"))

    @property
    def payload(self) -> bytes | None:
        """The raw message to replay; None if the record has none (or a corrupt one)."""
        if self.record.get("channel") not in CHANNELS or not {"payload", "payload_b64"} & self.record.keys():
            return None
        try:
            return payload_bytes(self.record)
        except ValueError:  # binascii.Error: payload_b64 is not base64
            return None

    def matches(self, channel: str | None, error_type: str | None) -> bool:
        return (channel is None or self.channel == channel) and (error_type is None or self.error_type == error_type)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


async def scan(redis: Redis) -> AsyncIterator[Entry]:
    """The list as it stood when the scan began, newest first."""
    length = int(await redis.llen(DLQ_KEY))
    for start in range(0, length, PAGE):
        stop = min(start + PAGE, length) - 1
        page = await redis.lrange(DLQ_KEY, start - length, stop - length)
        for offset, element in enumerate(page):
            raw = element if isinstance(element, bytes) else str(element).encode()
            yield Entry(start + offset, raw, _decode(raw))


async def select(redis: Redis, args: argparse.Namespace) -> list[Entry]:
    """The newest `--limit` records (0 or none: all) matching the filters."""
    limit = getattr(args, "limit", None) or None
    chosen: list[Entry] = []
    async for entry in scan(redis):
        if entry.matches(args.channel, args.error_type):
            chosen.append(entry)
            if limit is not None and len(chosen) >= limit:
                break
    return chosen


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _preview(entry: Entry) -> str:
    if "payload_b64" in entry.record:
        return "b64:" + str(entry.record["payload_b64"])
    if entry.record:
        return str(entry.record.get("payload", ""))
    return "(not a JSON object) " + entry.raw.decode("utf-8", "replace")


def _moment(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


class Printer:
    """Every line goes out with URL passwords, and the configured ones, masked."""

    def __init__(self, settings: Settings) -> None:
        self._secrets = tuple(p for p in (url_password(settings.redis_url), url_password(settings.mongo_url)) if p)

    def __call__(self, line: str, *, error: bool = False) -> None:
        print(redact_text(line, self._secrets), file=sys.stderr if error else sys.stdout)


async def list_records(settings: Settings, redis: Redis, args: argparse.Namespace, say: Printer) -> int:
    for entry in await select(redis, args):
        if args.json:
            shown = entry.record or {"unreadable": entry.raw.decode("utf-8", "replace")}
            say(orjson.dumps({"index": entry.index, **shown}).decode())
            continue
        fields = (
            f"{entry.index:>6}",
            str(entry.record.get("last_seen", entry.record.get("timestamp", "-"))),
            entry.channel,
            entry.error_type,
            f"x{entry.record.get('attempts', '-')}",
            _clip(str(entry.record.get("error", "")), ERROR_WIDTH),
            _clip(_preview(entry), PREVIEW_WIDTH),
        )
        say("  ".join(fields))
    return 0


async def stats(settings: Settings, redis: Redis, args: argparse.Namespace, say: Printer) -> int:
    channels: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    oldest: datetime | None = None
    newest: datetime | None = None
    async for entry in scan(redis):
        channels[entry.channel] += 1
        errors[entry.error_type] += 1
        first = _moment(entry.record.get("first_seen", entry.record.get("timestamp")))
        last = _moment(entry.record.get("last_seen", entry.record.get("timestamp")))
        if first is not None and first.tzinfo is not None and (oldest is None or first < oldest):
            oldest = first
        if last is not None and last.tzinfo is not None and (newest is None or last > newest):
            newest = last
    summary = {
        "total": channels.total(),
        "oldest": oldest.isoformat() if oldest else None,
        "newest": newest.isoformat() if newest else None,
        "by_channel": dict(channels.most_common()),
        "by_error_type": dict(errors.most_common()),
    }
    if args.json:
        say(orjson.dumps(summary).decode())
        return 0
    say(f"total   {summary['total']}")
    say(f"oldest  {summary['oldest'] or '-'}")
    say(f"newest  {summary['newest'] or '-'}")
    for title, counts in (("by channel", channels), ("by error_type", errors)):
        say(f"{title}:")
        for name, n in counts.most_common():
            say(f"  {n:>8}  {name}")
    return 0


class Recorder:
    """Every dead letter the replay app writes, to pair it with the record it came from."""

    def __init__(self, dead_letters: DeadLetters) -> None:
        self.letters: list[DeadLetter] = []
        add = dead_letters.add

        def record_and_add(letter: DeadLetter) -> None:
            self.letters.append(letter)
            add(letter)

        # DeadLetters has no observer hook; all its writers (pipeline, store, shutdown) call add().
        setattr(dead_letters, "add", record_and_add)  # noqa: B010


async def replay(settings: Settings, redis: Redis, args: argparse.Namespace, say: Printer) -> int:
    selected = await select(redis, args)
    entries = [entry for entry in reversed(selected) if entry.payload is not None]  # oldest first
    skipped = len(selected) - len(entries)
    outcomes: list[str] = []
    letters: list[DeadLetter] = []
    if entries:
        # Imported here: the CLI builds every parser, and only replay needs the whole pipeline.
        from enricher.app import Enricher  # noqa: PLC0415

        # Its own port-less app: it must not take the running daemon's HTTP port.
        app = Enricher(dataclasses.replace(settings, http_port=0), source=IdleSource())
        await app.start()
        recorder = Recorder(app.dead_letters)
        try:
            outcomes = await _run(app, entries, max(1, args.batch_size))
        finally:
            await app.stop()
        letters = recorder.letters
    succeeded = await _settle(redis, entries, outcomes, letters)
    line = f"replayed {len(entries)}, succeeded {succeeded}, still failing {len(entries) - succeeded}"
    say(line + (f", skipped {skipped} not replayable (no channel or payload)" if skipped else ""))
    return 0


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


async def purge(settings: Settings, redis: Redis, args: argparse.Namespace, say: Printer) -> int:
    filtered = args.channel is not None or args.error_type is not None
    selected = await select(redis, args) if filtered else []
    count = len(selected) if filtered else int(await redis.llen(DLQ_KEY))
    if not count:
        say("nothing to purge")
        return 0
    scope = f" matching {_describe(args)}" if filtered else ""
    if not args.yes:
        if not sys.stdin.isatty():
            say("refusing to purge without --yes: stdin is not a terminal", error=True)
            return 1
        answer = await asyncio.to_thread(input, f"delete {count} record(s){scope} from {DLQ_KEY}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            say("purge cancelled", error=True)
            return 1
    if filtered:
        async with redis.pipeline(transaction=False) as pipe:
            for entry in selected:
                pipe.lrem(DLQ_KEY, 1, entry.raw)  # type: ignore[arg-type]  # typed str; bytes go as is
            removed = sum(int(n) for n in await pipe.execute())
    else:
        # Everything, including what a running daemon added since the count above.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.llen(DLQ_KEY)
            pipe.delete(DLQ_KEY)
            removed, _ = await pipe.execute()
    say(f"purged {removed} record(s){scope}")
    return 0


def _describe(args: argparse.Namespace) -> str:
    parts = {"channel": args.channel, "error_type": args.error_type}
    return " ".join(f"{name}={value}" for name, value in parts.items() if value is not None)


Command = Callable[[Settings, Redis, argparse.Namespace, Printer], Awaitable[int]]
COMMANDS: Final[dict[str, Command]] = {"list": list_records, "stats": stats, "replay": replay, "purge": purge}


def add_dlq_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dlq` subcommands, on the `dlq` parser; `main_dlq` runs the chosen one."""
    commands = parser.add_subparsers(dest="dlq_command", required=True)

    def filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--channel", default=None, help="only records of this channel, e.g. market:underlying")
        sub.add_argument("--error-type", default=None, help="only records with this error_type, e.g. not_json")

    shown = commands.add_parser("list", help="show records, newest first")
    filters(shown)
    shown.add_argument("--limit", type=int, default=50, help="newest N matching records; 0 = all (default 50)")
    shown.add_argument("--json", action="store_true", help="one JSON record a line")

    counted = commands.add_parser("stats", help="counts by channel and error_type, oldest and newest")
    counted.add_argument("--json", action="store_true", help="one JSON object")

    again = commands.add_parser("replay", help="run records through the pipeline again; remove the ones that pass")
    filters(again)
    again.add_argument("--limit", type=int, default=0, help="newest N matching records; 0 = all (default)")
    again.add_argument(
        "--batch-size", type=int, default=1, help="records per pipeline batch; 1 keeps a bad one from failing others"
    )

    gone = commands.add_parser("purge", help="delete records (all, or those matching the filters)")
    filters(gone)
    gone.add_argument("--yes", action="store_true", help="do not ask for confirmation")


async def main_dlq(settings: Settings, args: argparse.Namespace) -> int:
    say = Printer(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        return await COMMANDS[args.dlq_command](settings, redis, args, say)
    except (RedisError, OSError) as exc:
        say(f"enricher dlq: Redis error: {exc}", error=True)
        return 1
    finally:
        await redis.aclose()
