"""Pick the event loop: uvloop when it is installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    # asyncio.Runner takes a loop factory on 3.11; asyncio.run only from 3.12.
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
