"""Real servers for the tests: a private redis-server and SecantusDB, started once per session.

Set ENRICHER_TEST_REDIS_URL and/or ENRICHER_TEST_MONGO_URL to run the same suite against
servers of your own (a real MongoDB, say). Each test gets a flushed Redis db and a fresh
MongoDB database name, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher import logs
from enricher.app import Enricher
from enricher.embedded import MongoServer, RedisServer
from enricher.settings import Settings

SAMPLES = Path(__file__).parent / "samples"
logs.configure("info", "console")


async def wait_for(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    """Poll a condition until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    external = os.environ.get("ENRICHER_TEST_REDIS_URL")
    if external:
        yield external
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    external = os.environ.get("ENRICHER_TEST_MONGO_URL")
    if external:
        yield external
        return
    with MongoServer() as server:
        yield server.url


@pytest.fixture
async def redis(redis_base_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_base_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def mongo(mongo_url: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
def db_name() -> str:
    return f"enricher_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_settings(redis_base_url: str, mongo_url: str, db_name: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_base_url,
            "mongo_url": mongo_url,
            "mongo_db": db_name,
            "pool_workers": 0,
            "flush_interval": 0.01,
            "grace_period": 10.0,
            "log_level": "warning",
            "http_port": 0,  # off: tests that want it start a HealthServer on an ephemeral port
            "warm_up": 0,  # ~0.1 s per start; tests/unit/test_warmup.py covers it
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def start_app(
    make_settings: Callable[..., Settings], redis: Redis
) -> AsyncIterator[Callable[..., Awaitable[Enricher]]]:
    """Factory: start an Enricher in-process; every one started is stopped at teardown."""
    started: list[Enricher] = []

    async def start(**overrides: Any) -> Enricher:
        app = Enricher(make_settings(**overrides))
        await app.start()
        started.append(app)
        return app

    yield start
    for app in reversed(started):
        await app.stop()


@pytest.fixture
def mongo_connect_leak() -> Iterator[None]:
    """PyMongo 4.20 leaks a socket when closing the client cancels a connect in progress.

    Fixed upstream (PYTHON-5867, mongo-python-driver#2858). The socket is unreachable but only
    freed by the cycle collector, in whichever later test it runs: collect it here, quietly.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()
