"""The daemon as operators run it: a subprocess, stopped by a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.embedded import free_port
from enricher.feed.publisher import publish_burst
from enricher.feed.synthetic import SyntheticFeed
from enricher.records import CHANNELS, OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from enricher.settings import Settings
from tests.conftest import wait_for

COLLECTIONS = {UNDERLYING: "underlying_ticks", OPTION_QUOTE: "option_quotes", OPTION_CHAIN: "option_chains"}


def start_daemon(redis_url: str, mongo_url: str, db_name: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """The daemon's logs go to a file: an unread pipe fills up and blocks it."""
    environ = {
        **os.environ,
        "REDIS_URL": redis_url,
        "MONGO_URL": mongo_url,
        "ENRICHER_MONGO_DB": db_name,
        "ENRICHER_LOG_LEVEL": "info",
        "ENRICHER_LOG_FORMAT": "json",
        **env,
    }
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "enricher", "run"], env=environ, stdout=sink, stderr=subprocess.STDOUT
        )


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


async def subscribed(redis: Redis, expected: int = 1) -> bool:
    counts = await redis.pubsub_numsub(*CHANNELS)
    return all(n >= expected for _, n in counts)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_and_flushes_everything_received(
    signum: signal.Signals,
    redis: Redis,
    redis_base_url: str,
    mongo: AsyncMongoClient[dict[str, Any]],
    mongo_url: str,
    db_name: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "daemon.log"
    port = free_port()
    daemon = start_daemon(
        redis_base_url, mongo_url, db_name, log, ENRICHER_POOL_WORKERS="1", ENRICHER_HTTP_PORT=str(port)
    )
    try:
        await wait_for(lambda: subscribed(redis), timeout=30, what="daemon subscription")

        async def ready() -> bool:
            return await asyncio.to_thread(http_status, port, "/readyz") == 200

        await wait_for(ready, timeout=30, what="/readyz")
        assert await asyncio.to_thread(http_status, port, "/healthz") == 200
        feed = SyntheticFeed(seed=7, start=datetime(2025, 1, 20, 4, 0, tzinfo=UTC), step=timedelta(milliseconds=5))
        sent = await publish_burst(redis, feed.burst(1000, 2000, 50))
        daemon.send_signal(signum)  # at once: much of the burst is still queued or in flight
        status = await asyncio.to_thread(daemon.wait, 60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    output = log.read_bytes()
    assert status == 0, output.decode()[-2000:]
    stored = Counter({channel: await mongo[db_name][name].count_documents({}) for channel, name in COLLECTIONS.items()})
    assert stored == Counter(sent)
    assert b'"event": "stopped"' in output
    assert await redis.llen("dlq:enrichment") == 0


def test_run_help_documents_every_setting() -> None:
    from enricher.settings import FIELDS

    result = subprocess.run(
        [sys.executable, "-m", "enricher", "run", "--help"], capture_output=True, text=True, check=True
    )
    for spec in FIELDS:
        assert spec.metadata["env"] in result.stdout, spec.name
        assert "--" + spec.name.replace("_", "-") in result.stdout, spec.name


def test_bad_setting_exits_2_with_a_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enricher", "run", "--workers", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "workers must be at least 1" in result.stderr


async def test_mongo_client_timeouts_come_from_the_settings(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    app = Enricher(make_settings(mongo_timeout=1.5, mongo_op_timeout=7.0))
    await app.start()
    try:
        options = app.mongo.options
        assert options.server_selection_timeout == 1.5
        assert options.timeout == 7.0
    finally:
        await app.stop()


async def test_settle_runs_once_everything_is_built_and_before_the_subscription(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    seen: list[tuple[bool, int]] = []
    app: Enricher

    def settle() -> None:  # the daemon collects and freezes its heap here: no message may wait behind it
        seen.append((app.source.ready.is_set(), len(app.queues)))

    app = Enricher(make_settings(), settle=settle)
    await app.start()
    try:
        assert seen == [(False, 3)]
        assert await subscribed(redis)
    finally:
        await app.stop()


async def test_the_warm_up_leaves_no_trace(make_settings: Callable[..., Settings], redis: Redis) -> None:
    # warmup.py runs synthetic feed seconds through the analytics at start-up, on a state of its own.
    app = Enricher(make_settings(warm_up=2))
    await app.start()
    try:
        assert await subscribed(redis)
        assert await redis.keys("*") == []  # nothing cached, published state or marked
        assert dict(app.metrics.messages) == {}
        state = app.pipeline.state
        assert (state.snapshots, state.forwards, state.spots, state.dirty) == ({}, {}, {}, set())
    finally:
        await app.stop()
