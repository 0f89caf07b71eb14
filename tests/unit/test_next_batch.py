"""next_batch: what is queued, bounded by a message count and by payload bytes; PeakQueue."""

from __future__ import annotations

import asyncio

from enricher.intake import PeakQueue, next_batch
from enricher.records import OPTION_CHAIN
from enricher.source import RawMessage


def _queue(*sizes: int) -> asyncio.Queue[RawMessage]:
    queue: asyncio.Queue[RawMessage] = asyncio.Queue()
    for size in sizes:
        queue.put_nowait(RawMessage(OPTION_CHAIN, b"x" * size, 0.0))
    return queue


async def test_takes_until_the_payloads_reach_the_byte_bound() -> None:
    queue = _queue(100, 100, 100, 100, 100)
    batch = await next_batch(queue, 500, max_bytes=250)
    assert [len(m.data) for m in batch] == [100, 100, 100]  # the third reaches 250: it is the last
    assert queue.qsize() == 2


async def test_a_message_bigger_than_the_bound_still_goes_alone() -> None:
    queue = _queue(1000, 10)
    assert [len(m.data) for m in await next_batch(queue, 500, max_bytes=250)] == [1000]
    assert [len(m.data) for m in await next_batch(queue, 500, max_bytes=250)] == [10]


async def test_the_count_bound_and_no_byte_bound() -> None:
    queue = _queue(*[10] * 7)
    assert len(await next_batch(queue, 3)) == 3
    assert len(await next_batch(queue, 500)) == 4  # all that is left, without waiting for more


async def test_a_queue_remembers_the_most_it_held_whichever_way_messages_came_in() -> None:
    queue = PeakQueue(10)
    queue.put_nowait(RawMessage(OPTION_CHAIN, b"a", 0.0))
    await queue.put(RawMessage(OPTION_CHAIN, b"b", 0.0))  # as a backlog's refill does
    assert queue.peak == 2
    await next_batch(queue, 500)
    queue.put_nowait(RawMessage(OPTION_CHAIN, b"c", 0.0))
    assert queue.qsize() == 1
    assert queue.peak == 2
