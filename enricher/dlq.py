"""`python -m enricher dlq`: list, count, replay and purge the records in `dlq:enrichment`.

Reading is deadletter.py's (pages from the tail, so a running daemon doesn't shift them);
replay is replay.py's. A record is removed by `LREM 1 <its exact bytes>`, one copy at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Final

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.deadletter import DLQ_KEY, Entry, scan, select
from enricher.metrics import DUPLICATE, PROCESSED
from enricher.redact import redact_text, url_password
from enricher.settings import Settings

if TYPE_CHECKING:
    pass

log = structlog.get_logger("enricher.dlq")

PAGE: Final = 500
SUCCESS: Final = frozenset((PROCESSED, DUPLICATE))
ERROR_WIDTH: Final = 60
PREVIEW_WIDTH: Final = 80


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
    for entry in await _select(redis, args):
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


async def replay_command(settings: Settings, redis: Redis, args: argparse.Namespace, say: Printer) -> int:
    selected = await _select(redis, args)
    entries = [entry for entry in reversed(selected) if entry.payload is not None]  # oldest first
    skipped = len(selected) - len(entries)
    # Imported here: the CLI builds every parser, and only replay needs the whole pipeline.
    from enricher.replay import replay  # noqa: PLC0415

    succeeded = await replay(settings, redis, entries, args.batch_size)
    line = f"replayed {len(entries)}, succeeded {succeeded}, still failing {len(entries) - succeeded}"
    say(line + (f", skipped {skipped} not replayable (no channel or payload)" if skipped else ""))
    return 0


async def _select(redis: Redis, args: argparse.Namespace) -> list[Entry]:
    return await select(redis, args.channel, args.error_type, getattr(args, "limit", None))


async def purge(settings: Settings, redis: Redis, args: argparse.Namespace, say: Printer) -> int:
    filtered = args.channel is not None or args.error_type is not None
    selected = await _select(redis, args) if filtered else []
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
COMMANDS: Final[dict[str, Command]] = {"list": list_records, "stats": stats, "replay": replay_command, "purge": purge}


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
