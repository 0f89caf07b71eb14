"""Which failures are worth a retry: transport trouble is transient, bad data is permanent."""

from __future__ import annotations

import asyncio
from concurrent.futures.process import BrokenProcessPool

from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

TRANSIENT = (
    ConnectionFailure,  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
    ExecutionTimeout,
    WTimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    BrokenProcessPool,
    ConnectionError,
    TimeoutError,
)


def honour_cancel() -> None:
    """Call in an `except` for Redis errors inside a loop: redis-py can turn a cancellation into
    a connection error, and a loop that goes on after it can never be stopped."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError")
