"""The daemon's runtime guards: bounded shutdown steps (redis-py can swallow a cancel), GC tuning."""

from __future__ import annotations

import asyncio
import gc

import pytest

from enricher.app import _bounded
from enricher.errors import honour_cancel


async def test_a_step_that_swallows_its_cancel_does_not_hold_up_the_shutdown() -> None:
    unwound = asyncio.Event()

    async def stubborn() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(1.5)  # ignores the cancel for longer than the grace it gets
            unwound.set()
        return "late"

    # asyncio.wait_for here would wait out the whole 1.5 s swallow; _bounded gives up after 1 s.
    assert await asyncio.wait_for(_bounded("stubborn", stubborn(), 0.05), 1.45) is None
    await asyncio.wait_for(unwound.wait(), 5)


async def test_a_failed_step_is_logged_and_the_shutdown_goes_on() -> None:
    async def broken() -> int:
        raise RuntimeError("boom")

    assert await _bounded("broken", broken(), 1.0) is None
    assert await _bounded("fine", asyncio.sleep(0, result=7), 1.0) == 7


async def test_honour_cancel_turns_a_swallowed_cancel_back_into_one() -> None:
    entered = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                entered.set()
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    raise ConnectionError("what redis-py may raise instead") from None
            except ConnectionError:
                honour_cancel()

    task = asyncio.create_task(loop())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


def test_the_daemon_collects_less_often_after_start_up() -> None:
    from enricher.app import GC_THRESHOLDS, quiet_collector

    before = gc.get_threshold()
    try:
        quiet_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # start-up objects moved out of the collector's way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
