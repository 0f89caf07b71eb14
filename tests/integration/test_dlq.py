"""`python -m enricher dlq` on real servers, over dead letters the pipeline itself wrote."""

from __future__ import annotations

import argparse
import builtins
import io
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.deadletter import DLQ_KEY, DeadLetter, payload_bytes
from enricher.dlq import add_dlq_arguments, main_dlq
from enricher.embedded import free_port
from enricher.messages import parse
from enricher.pipeline import Pipeline
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from enricher.settings import Settings
from tests.conftest import sample, wait_for
from tests.integration.helpers import publish, with_fields

StartApp = Callable[..., Awaitable[Enricher]]
MakeSettings = Callable[..., Settings]
Mongo = AsyncMongoClient[dict[str, Any]]

TICK = sample("synthetic_underlying.json")
QUOTE_WITHOUT_STRIKE = orjson.dumps(
    {k: v for k, v in orjson.loads(sample("synthetic_option_quote.json")).items() if k != "strike"}
)
BAD = {  # payload -> (channel, the reason parse gives)
    b"{not json": (UNDERLYING, "not_json"),
    with_fields(TICK, price=-1.5): (UNDERLYING, "negative"),
    b'{"product": "NIFTY\xff"}': (UNDERLYING, "not_utf8"),
    QUOTE_WITHOUT_STRIKE: (OPTION_QUOTE, "missing_field"),
    b"[1, 2, 3]": (OPTION_CHAIN, "not_object"),
}


async def dlq(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="enricher dlq")
    add_dlq_arguments(parser)
    return await main_dlq(settings, parser.parse_args(argv))


async def records(redis: Redis) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in await redis.lrange(DLQ_KEY, 0, -1)]


async def dlq_length(redis: Redis, expected: int) -> None:
    async def reached() -> bool:
        return int(await redis.llen(DLQ_KEY)) >= expected

    await wait_for(reached, what=f"{expected} dead letters")


async def seed(start_app: StartApp, redis: Redis) -> None:
    """Bad and good messages through a running daemon; it dead-letters the bad ones."""
    app = await start_app()
    for payload, (channel, _) in BAD.items():
        await publish(redis, channel, payload)
    await publish(redis, UNDERLYING, TICK)
    await dlq_length(redis, len(BAD))
    await app.stop()
    assert int(await redis.llen(DLQ_KEY)) == len(BAD)


def queued(channel: str, payload: bytes, error_type: str = "queue_full", attempts: int = 1) -> bytes:
    """A record as the daemon writes it, for a message that is valid (it hit a full queue, say)."""
    now = time.time()
    return DeadLetter(channel, payload, error_type, "queue full", attempts, now - 60, now - 30).to_json()


def tick(n: int) -> bytes:
    return with_fields(TICK, tick_id=n, timestamp=f"2025-01-20T10:15:{n:02d}.000001")


def tick_id(payload: bytes, settings: Settings) -> str:
    return parse(UNDERLYING, payload, feed_tz=settings.tz).identity


async def test_list_newest_first_with_filters(
    start_app: StartApp, redis: Redis, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(start_app, redis)
    settings = make_settings()
    capsys.readouterr()

    assert await dlq(settings, "list", "--json") == 0
    shown = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["index"] for record in shown] == list(range(len(BAD)))
    assert [record["last_seen"] for record in shown] == sorted((r["last_seen"] for r in shown), reverse=True)
    assert {payload_bytes(r): (r["channel"], r["error_type"]) for r in shown} == BAD  # byte-exact, reason code
    assert all(r["attempts"] == 1 and r["enricher_version"] for r in shown)

    assert await dlq(settings, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(BAD)
    assert lines[0].split()[0] == "0"
    assert any("not_utf8" in line and "b64:" in line for line in lines)

    assert await dlq(settings, "list", "--channel", UNDERLYING) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(UNDERLYING in line for line in lines)
    assert await dlq(settings, "list", "--error-type", "missing_field", "--json") == 0
    (only,) = capsys.readouterr().out.splitlines()
    assert payload_bytes(orjson.loads(only)) == QUOTE_WITHOUT_STRIKE
    assert await dlq(settings, "list", "--limit", "2", "--json") == 0
    assert [orjson.loads(line)["index"] for line in capsys.readouterr().out.splitlines()] == [0, 1]


async def test_stats(
    start_app: StartApp, redis: Redis, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(start_app, redis)
    await redis.rpush(DLQ_KEY, b"\x00 not a record")  # the oldest: unreadable, still counted
    settings = make_settings()
    capsys.readouterr()
    assert await dlq(settings, "stats", "--json") == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["total"] == len(BAD) + 1
    assert summary["by_channel"] == {UNDERLYING: 3, OPTION_QUOTE: 1, OPTION_CHAIN: 1, "-": 1}
    assert summary["by_error_type"] == {**Counter(reason for _, reason in BAD.values()), "-": 1}
    assert summary["oldest"] <= summary["newest"]
    assert await dlq(settings, "stats") == 0
    text = capsys.readouterr().out
    assert f"total   {len(BAD) + 1}" in text
    assert "not_json" in text
    assert OPTION_CHAIN in text


async def test_output_masks_passwords(
    redis: Redis, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    letter = DeadLetter(UNDERLYING, b"{}", "ConnectionError", "to mongodb://app:s3cr3t@db:27017 failed", 8, 1.0, 2.0)
    await redis.lpush(DLQ_KEY, letter.to_json())
    for argv in (["list"], ["list", "--json"]):
        assert await dlq(make_settings(), *argv) == 0
        out = capsys.readouterr().out
        assert "s3cr3t" not in out
        assert "app:***@db" in out


async def test_purge_refuses_without_yes_when_not_interactive(
    start_app: StartApp,
    redis: Redis,
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(start_app, redis)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert await dlq(make_settings(), "purge") == 1
    assert "--yes" in capsys.readouterr().err
    assert int(await redis.llen(DLQ_KEY)) == len(BAD)


async def test_purge_asks_at_a_terminal(
    start_app: StartApp,
    redis: Redis,
    make_settings: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    await seed(start_app, redis)
    answers = iter(["n", "yes"])
    prompts: list[str] = []

    def answer(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr(builtins, "input", answer)
    assert await dlq(make_settings(), "purge", "--channel", UNDERLYING) == 1
    assert int(await redis.llen(DLQ_KEY)) == len(BAD)
    assert await dlq(make_settings(), "purge", "--channel", UNDERLYING) == 0
    assert prompts == [f"delete 3 record(s) matching channel={UNDERLYING} from {DLQ_KEY}? [y/N] "] * 2
    assert {r["channel"] for r in await records(redis)} == {OPTION_QUOTE, OPTION_CHAIN}
    assert "purged 3 record(s)" in capsys.readouterr().out


async def test_purge_with_yes(start_app: StartApp, redis: Redis, make_settings: MakeSettings) -> None:
    await seed(start_app, redis)
    identical = queued(UNDERLYING, TICK, error_type="not_json")
    await redis.lpush(DLQ_KEY, identical, identical)
    settings = make_settings()
    assert await dlq(settings, "purge", "--error-type", "not_json", "--yes") == 0
    assert "not_json" not in {r["error_type"] for r in await records(redis)}
    assert int(await redis.llen(DLQ_KEY)) == len(BAD) - 1
    assert await dlq(settings, "purge", "--channel", OPTION_CHAIN, "--error-type", "not_object", "--yes") == 0
    assert int(await redis.llen(DLQ_KEY)) == len(BAD) - 2
    assert await dlq(settings, "purge", "--yes") == 0
    assert not await redis.exists(DLQ_KEY)
    assert await dlq(settings, "purge", "--yes") == 0  # nothing left: not an error


async def test_replay_stores_what_now_passes_and_keeps_what_fails_once(
    start_app: StartApp,
    redis: Redis,
    mongo: Mongo,
    db_name: str,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(start_app, redis)
    before = {payload_bytes(r): r for r in await records(redis)}
    good = tick(1)
    await redis.lpush(DLQ_KEY, queued(UNDERLYING, good, attempts=2))
    settings = make_settings()
    ticks = mongo[db_name].underlying_ticks

    assert await dlq(settings, "replay") == 0
    assert capsys.readouterr().out.strip() == f"replayed {len(BAD) + 1}, succeeded 1, still failing {len(BAD)}"
    assert await ticks.count_documents({"_id": tick_id(good, settings)}) == 1
    after = await records(redis)
    assert len(after) == len(BAD)  # the good one gone, each bad one there exactly once
    assert {payload_bytes(r): (r["channel"], r["error_type"]) for r in after} == BAD
    for record in after:
        old = before[payload_bytes(record)]
        assert record["attempts"] == 2
        assert record["first_seen"] == old["first_seen"]
        assert record["last_seen"] > old["last_seen"]

    # Again: nothing new is stored, and the failures are still there once each.
    assert await dlq(settings, "replay") == 0
    assert capsys.readouterr().out.strip() == f"replayed {len(BAD)}, succeeded 0, still failing {len(BAD)}"
    assert sorted(r["attempts"] for r in await records(redis)) == [3] * len(BAD)
    # The same good message dead-lettered once more (a redelivery): a duplicate, removed, stored once.
    await redis.lpush(DLQ_KEY, queued(UNDERLYING, good))
    assert await dlq(settings, "replay", "--channel", UNDERLYING) == 0
    assert capsys.readouterr().out.strip() == "replayed 4, succeeded 1, still failing 3"
    assert await ticks.count_documents({}) == 2  # the seeding run's good tick, and this one
    assert int(await redis.llen(DLQ_KEY)) == len(BAD)


async def test_replay_selects_by_filter_and_limit(
    redis: Redis, mongo: Mongo, db_name: str, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    oldest, middle, newest = tick(1), tick(2), tick(3)
    for payload in (oldest, middle, newest):
        await redis.lpush(DLQ_KEY, queued(UNDERLYING, payload))
    await redis.lpush(DLQ_KEY, queued(UNDERLYING, tick(4), error_type="shutdown"))
    assert await dlq(settings, "replay", "--error-type", "queue_full", "--limit", "2") == 0
    assert capsys.readouterr().out.strip() == "replayed 2, succeeded 2, still failing 0"
    left = await records(redis)
    assert [payload_bytes(r) for r in left] == [tick(4), oldest]
    ids = {doc["_id"] async for doc in mongo[db_name].underlying_ticks.find({}, {"_id": 1})}
    assert ids == {tick_id(middle, settings), tick_id(newest, settings)}


async def test_replay_identical_records(
    redis: Redis, mongo: Mongo, db_name: str, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two copies of one good record: stored once, both removed. Two of a bad one: two stay."""
    settings = make_settings()
    good, bad = queued(UNDERLYING, tick(5)), queued(UNDERLYING, b"nope", error_type="not_json")
    await redis.lpush(DLQ_KEY, good, bad, good, bad)
    assert await dlq(settings, "replay", "--batch-size", "10") == 0
    assert capsys.readouterr().out.strip() == "replayed 4, succeeded 2, still failing 2"
    assert await mongo[db_name].underlying_ticks.count_documents({}) == 1
    left = await records(redis)
    assert [(payload_bytes(r), r["attempts"]) for r in left] == [(b"nope", 2)] * 2


async def test_replay_merges_a_failure_the_store_reports_later(
    redis: Redis, mongo: Mongo, db_name: str, make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`processed` is only handed to MongoDB; when MongoDB then refuses it, one record remains."""
    settings = make_settings()
    schema = {"bsonType": "object", "properties": {"tick_id": {"maximum": 100}}}
    await mongo[db_name].create_collection("underlying_ticks", validator={"$jsonSchema": schema})
    refused, accepted = with_fields(tick(8), tick_id=666), tick(9)
    await redis.lpush(DLQ_KEY, queued(UNDERLYING, refused), queued(UNDERLYING, accepted))
    assert await dlq(settings, "replay") == 0
    assert capsys.readouterr().out.strip() == "replayed 2, succeeded 1, still failing 1"
    (record,) = await records(redis)
    assert payload_bytes(record) == refused
    assert (record["error_type"], record["attempts"]) == ("mongo_write_error", 2)
    ids = {doc["_id"] async for doc in mongo[db_name].underlying_ticks.find({}, {"_id": 1})}
    assert ids == {tick_id(accepted, settings)}


async def test_replay_keeps_records_when_the_pipeline_raises(
    redis: Redis, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(self: Pipeline, channel: str, batch: Any) -> list[str]:
        raise RuntimeError("a bug")

    old_service = orjson.dumps({"task_id": "x", "task_name": "enrich_tick", "error": "e", "args": [], "timestamp": 1})
    record = queued(UNDERLYING, tick(7))
    await redis.lpush(DLQ_KEY, old_service, record)
    monkeypatch.setattr(Pipeline, "handle", broken)
    assert await dlq(make_settings(), "replay") == 0
    out = capsys.readouterr().out.strip()
    assert out == "replayed 1, succeeded 0, still failing 1, skipped 1 not replayable (no channel or payload)"
    assert await redis.lrange(DLQ_KEY, 0, -1) == [record, old_service]


async def test_unreachable_redis_is_an_error_without_the_password(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis_url=f"redis://app:hunter2@127.0.0.1:{free_port()}/0")
    assert await dlq(settings, "stats") == 1
    err = capsys.readouterr().err
    assert "Redis error" in err
    assert "hunter2" not in err
