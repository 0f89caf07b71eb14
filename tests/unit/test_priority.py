"""LiveFirst: each tier waits for the earlier ones (ticks, chains, then quotes and MongoDB), but
never past the limit."""

from __future__ import annotations

import asyncio

from enricher.priority import LAST, TIERS, LiveFirst
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING

TICKS, CHAINS, QUOTES = TIERS[UNDERLYING], TIERS[OPTION_CHAIN], TIERS[OPTION_QUOTE]


def test_ticks_then_chains_then_quotes_and_mongodb() -> None:
    assert TICKS < CHAINS < QUOTES == LAST


async def test_idle_earlier_tiers_do_not_hold_anything_up() -> None:
    live = LiveFirst(limit=60.0)
    live.watch(TICKS, asyncio.Queue())
    with live.batch(QUOTES):  # a later tier running does not hold up an earlier one
        async with asyncio.timeout(1.0):  # a minute's limit: returning means it did not wait
            await live.wait(TICKS)
            await live.wait(CHAINS)
    async with asyncio.timeout(1.0):
        await live.wait(LAST)


async def test_waits_for_a_running_earlier_batch_to_end() -> None:
    live = LiveFirst(limit=60.0)
    order: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def tick_batch() -> None:
        with live.batch(TICKS):
            started.set()
            await release.wait()
            order.append("tick")

    async def later(tier: int, name: str) -> None:
        await live.wait(tier)
        order.append(name)

    running = asyncio.create_task(tick_batch())
    await started.wait()
    waiting = [asyncio.create_task(later(CHAINS, "chain")), asyncio.create_task(later(LAST, "mongo"))]
    await asyncio.sleep(0)
    assert live.busy_before(CHAINS)
    assert not any(task.done() for task in waiting)
    release.set()
    async with asyncio.timeout(5.0):
        await asyncio.gather(running, *waiting)
    assert order == ["tick", "chain", "mongo"]


async def test_a_queued_earlier_message_holds_it_until_its_batch_ends() -> None:
    live = LiveFirst(limit=60.0)
    queue: asyncio.Queue[str] = asyncio.Queue()
    live.watch(CHAINS, queue)
    queue.put_nowait("chain")
    assert live.busy_before(QUOTES)
    assert not live.busy_before(CHAINS)  # a tier does not wait for itself
    waiting = asyncio.create_task(live.wait(QUOTES))
    await asyncio.sleep(0)
    with live.batch(CHAINS):  # a worker takes the chain
        queue.get_nowait()
        await asyncio.sleep(0)
        assert not waiting.done()
    async with asyncio.timeout(5.0):
        await waiting
    assert not live.busy_before(LAST)


async def test_never_waits_past_the_limit() -> None:
    live = LiveFirst(limit=0.02)
    loop = asyncio.get_running_loop()
    with live.batch(TICKS):  # a tick batch that outlasts the limit
        started = loop.time()
        async with asyncio.timeout(5.0):
            await live.wait(QUOTES)
        assert loop.time() - started >= 0.02
        assert live.busy_before(QUOTES)
