"""`python -m enricher check`: can this daemon, with these settings, do its job?

Each check is one line, `ok`, `warn`, `skip` or `FAIL`, and any FAIL makes the exit status 1.
Redis must answer, be 6.2 or newer, take a key with a TTL, not evict keys without one
(PITFALLS.md: `allkeys-*` evicts the dead-letter list) and confirm a subscription to every
input channel. MongoDB (unless ENRICHER_PERSIST is false) must answer within the configured
server-selection timeout, take the contract's indexes and a probe document. Every reason
shown passes through `redact_text`, so a password in a URL never reaches the terminal.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from enricher.partitions import streams_of
from enricher.records import CHANNELS
from enricher.redact import redact_text, redact_url, url_password
from enricher.settings import Settings
from enricher.store import INDEXES

OK: Final = "ok"
WARN: Final = "warn"
SKIP: Final = "skip"
FAIL: Final = "FAIL"
REDIS_MIN: Final = (6, 2)
PROBE_COLLECTION: Final = "_enricher_check"

Outcome = tuple[str, str]  # (status, detail)


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: str  # OK, WARN, SKIP or FAIL
    name: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        if not self.detail:
            return f"{self.status:<4} {self.name}"
        if self.status == OK:
            return f"{self.status:<4} {self.name} ({self.detail})"
        return f"{self.status:<4} {self.name}: {self.detail}"


async def run_checks(settings: Settings, *, timeout: float = 5.0) -> list[CheckResult]:
    """Every check, Redis's first; `timeout` bounds each Redis step (MongoDB uses the settings')."""
    secrets = tuple(p for p in (url_password(settings.redis_url), url_password(settings.mongo_url)) if p)
    redis_checks = _redis_checks(settings, timeout, secrets)
    if not settings.persist:
        return [*await redis_checks, CheckResult(SKIP, "mongodb", "ENRICHER_PERSIST is false")]
    redis_results, mongo_results = await asyncio.gather(redis_checks, _mongo_checks(settings, secrets))
    return [*redis_results, *mongo_results]


def format(results: list[CheckResult]) -> str:
    failed = sum(result.failed for result in results)
    warned = sum(result.status == WARN for result in results)
    summary = f"{failed} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed"
    if warned:
        summary += f", {warned} warning{'s' if warned > 1 else ''}"
    return "\n".join([*(result.line() for result in results), summary])


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(result.failed for result in results) else 0


async def main_check(settings: Settings) -> int:
    """Print the checks and return the process's exit status."""
    results = await run_checks(settings)
    print(format(results), flush=True)
    return exit_code(results)


def _reason(exc: BaseException, secrets: tuple[str, ...]) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc) or type(exc).__name__
    # PyMongo appends its whole topology description and timeout settings: noise on one line.
    text = text.split(", Topology Description:", 1)[0]
    text = re.sub(r" \(configured timeouts: [^)]*\)", "", text)
    return redact_text(" ".join(text.split()), secrets)[:300]


async def _step(
    name: str, check: Callable[[], Awaitable[Outcome]], timeout: float, secrets: tuple[str, ...]
) -> CheckResult:
    try:
        async with asyncio.timeout(timeout):
            status, detail = await check()
    except Exception as exc:  # any failure is the check's answer, not a crash
        return CheckResult(FAIL, name, _reason(exc, secrets))
    return CheckResult(status, name, detail)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


async def _redis_checks(settings: Settings, timeout: float, secrets: tuple[str, ...]) -> list[CheckResult]:
    url = settings.redis_url
    shown = redact_url(url)
    try:
        client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True)
    except ValueError as exc:
        return [CheckResult(FAIL, "redis url", _reason(exc, secrets))]
    try:
        try:
            async with asyncio.timeout(timeout):
                await client.ping()
                info = await client.info("server")
        except Exception as exc:  # unreachable, refused, auth: nothing else can be checked
            return [CheckResult(FAIL, "redis reachable", f"{shown}: {_reason(exc, secrets)}")]
        version = str(info.get("redis_version", "unknown"))
        too_old = _version(version) < REDIS_MIN
        minimum = ".".join(map(str, REDIS_MIN))
        results = [
            CheckResult(OK, "redis ping", version),
            CheckResult(FAIL, "redis version", f"{version} is older than {minimum}")
            if too_old
            else CheckResult(OK, f"redis version ≥ {minimum}"),
            await _step("redis write with TTL", lambda: _redis_write(client), timeout, secrets),
            await _step("redis maxmemory-policy", lambda: _eviction(client), timeout, secrets),
            await _step("redis subscribe", lambda: _subscribe(client, timeout), timeout, secrets),
        ]
        if settings.source == "streams":
            results.append(await _step("redis streams", lambda: _streams(client, settings), timeout, secrets))
        return results
    finally:
        await client.aclose()


async def _streams(client: Redis, settings: Settings) -> Outcome:
    """The group's backlog over every partition (Redis ≥ 6.2, checked above, has XAUTOCLAIM and MINID)."""
    count = settings.stream_partitions
    names = [name for k in range(count) for name in streams_of(settings.stream_prefix, k, count)]
    present = pending = unread = 0
    for name in names:
        if not await client.exists(name):
            continue
        present += 1
        for group in await client.xinfo_groups(name):
            if group.get("name") == settings.stream_group:
                pending += int(group.get("pending") or 0)
                unread += int(group.get("lag") or 0)  # Redis 7 reports lag; 6.2 does not
    detail = f"{present} of {len(names)} streams; group {settings.stream_group}: {pending} pending, {unread} unread"
    return OK, detail


async def _redis_write(client: Redis) -> Outcome:
    key = f"enricher:check:{uuid.uuid4().hex}"
    await client.set(key, "1", ex=30)
    ttl = await client.ttl(key)
    deleted = await client.delete(key)
    if not 0 < ttl <= 30:
        return FAIL, f"the key's TTL reads {ttl}, expected 1..30"
    if deleted != 1:
        return FAIL, "the key was gone before DEL"
    return OK, "SET EX, TTL, DEL"


async def _eviction(client: Redis) -> Outcome:
    try:
        config = await client.config_get("maxmemory*")
    except ResponseError as exc:  # NOPERM under an ACL, or CONFIG renamed away (managed Redis)
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return SKIP, f"cannot read it ({first_line[:120]}); make sure it is not allkeys-*"
    policy = str(config.get("maxmemory-policy", "unknown"))
    if policy.startswith("allkeys-"):
        limit = str(config.get("maxmemory", "?"))
        later = " (maxmemory is 0, so not yet)" if limit == "0" else ""
        return WARN, f"{policy} can evict dlq:enrichment{later}; use volatile-lru or volatile-ttl"
    return OK, policy


async def _subscribe(client: Redis, timeout: float) -> Outcome:
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(*CHANNELS)
        confirmed: set[str] = set()
        while len(confirmed) < len(CHANNELS):  # _step's timeout bounds this loop
            message = await pubsub.get_message(timeout=timeout)
            if message is not None and message["type"] == "subscribe":
                confirmed.add(str(message["channel"]))
        await pubsub.unsubscribe()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py
    return OK, f"{len(confirmed)} channels confirmed"


async def _mongo_checks(settings: Settings, secrets: tuple[str, ...]) -> list[CheckResult]:
    shown = redact_url(settings.mongo_url)
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_url,
            tz_aware=True,
            serverSelectionTimeoutMS=int(settings.mongo_timeout * 1000),
            appname="enricher-check",
        )
    except Exception as exc:  # InvalidURI, ConfigurationError: the URL itself is wrong
        return [CheckResult(FAIL, "mongodb url", _reason(exc, secrets))]
    try:
        try:
            await client.admin.command("ping")
        except Exception as exc:
            return [CheckResult(FAIL, "mongodb reachable", f"{shown}: {_reason(exc, secrets)}")]
        db = client[settings.mongo_db]
        timeout = settings.mongo_op_timeout
        return [
            await _step("mongodb ping", lambda: _build_info(client), timeout, secrets),
            await _step(f"mongodb indexes in {settings.mongo_db}", lambda: _indexes(db), timeout, secrets),
            await _step(f"mongodb insert and delete in {PROBE_COLLECTION}", lambda: _probe(db), timeout, secrets),
        ]
    finally:
        await client.close()


async def _build_info(client: AsyncMongoClient[dict[str, Any]]) -> Outcome:
    info = await client.admin.command("buildInfo")
    return OK, str(info.get("version", "version unknown"))


async def _indexes(db: AsyncDatabase[dict[str, Any]]) -> Outcome:
    for name, models in INDEXES.items():
        await db[name].create_indexes(models)
    return OK, f"{sum(len(models) for models in INDEXES.values())} indexes on {len(INDEXES)} collections"


async def _probe(db: AsyncDatabase[dict[str, Any]]) -> Outcome:
    probe = db[PROBE_COLLECTION]
    key = uuid.uuid4().hex
    await probe.insert_one({"_id": key, "at": datetime.now(UTC)})
    deleted = await probe.delete_one({"_id": key})
    if deleted.deleted_count != 1:
        return FAIL, "the probe document was not found to delete"
    return OK, "acknowledged"
