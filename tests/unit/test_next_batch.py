"""next_batch: what is queued, bounded by a message count and by payload bytes."""

from __future__ import annotations

import asyncio

from enricher.intake import next_batch
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
