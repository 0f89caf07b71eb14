"""Credentials work, and never show: not in a log line, not in an error."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from enricher.app import Enricher
from enricher.embedded import RedisServer
from enricher.records import UNDERLYING
from enricher.redact import redact_text, redact_url
from enricher.settings import Settings
from tests.conftest import sample, wait_for
from tests.integration.helpers import publish

SECRET = "s3cret-Pa55"


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    with RedisServer(password=SECRET) as server:
        yield server


def test_redaction_of_urls_and_driver_messages() -> None:
    assert redact_url(f"redis://user:{SECRET}@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact_url("rediss://host:6380/0") == "rediss://host:6380/0"
    text = f"connection to mongodb+srv://app:{SECRET}@cluster.example/db?tls=true failed"
    assert SECRET not in redact_text(text)
    assert SECRET not in redact_text(f"AUTH failed for {SECRET}", secrets=(SECRET,))


async def test_a_password_protected_redis_works_and_its_password_never_shows(
    locked_redis: RedisServer,
    make_settings: Callable[..., Settings],
) -> None:
    app = Enricher(make_settings(redis_url=locked_redis.url, persist=False, log_level="debug"))
    with capture_logs() as logged:
        await run_and_break(app, locked_redis)
    events = {entry["event"] for entry in logged}
    assert {"starting", "redis_disconnected", "stopped"} <= events
    assert SECRET not in repr(logged)


async def run_and_break(app: Enricher, locked_redis: RedisServer) -> None:
    await app.start()
    try:
        client = Redis.from_url(locked_redis.url)
        await publish(client, UNDERLYING, sample("synthetic_underlying.json"))
        await wait_for(lambda: app.metrics.messages[UNDERLYING, "processed"] == 1, what="the tick processed")
        assert await client.get("latest:underlying:NIFTY") is not None
        await client.aclose()
        locked_redis.kill()  # errors now name the URL: still without the password
        await wait_for(lambda: app.metrics.events["redis_reconnects"] >= 1, what="a reconnect attempt")
    finally:
        await app.stop()
