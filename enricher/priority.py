"""Live outputs first: ticks, then chains, then quotes and MongoDB writes.

Everything runs on one event loop, so whatever else is ready when a feed second arrives delays
the ticks and chains that the websocket gateway is waiting for. A tick costs the least and
its output is the most frequent; a chain costs milliseconds; quotes publish nothing (their
cache key is all the live path reads of them), and MongoDB is written behind the cache anyway.
So a batch of one tier, before it starts, waits while any earlier tier has a message queued or
a batch running, for at most `limit` seconds. The limit keeps the later tiers from starving
under a load that never pauses: each batch waits at most that long, then goes ahead regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Final

from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING

# Each channel's tier; MongoDB writes wait with the last.
TIERS: Final = {UNDERLYING: 0, OPTION_CHAIN: 1, OPTION_QUOTE: 2}
LAST: Final = max(TIERS.values())


class LiveFirst:
    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._queues: list[tuple[int, asyncio.Queue[Any]]] = []
        self._running = [0] * (LAST + 1)
        self._changed = asyncio.Event()

    def watch(self, tier: int, queue: asyncio.Queue[Any]) -> None:
        """A tier's queue: while it holds anything, that tier is busy."""
        self._queues.append((tier, queue))

    @contextlib.contextmanager
    def batch(self, tier: int) -> Iterator[None]:
        """Around one batch of `tier`."""
        self._running[tier] += 1
        try:
            yield
        finally:
            self._running[tier] -= 1
            self._changed.set()

    def busy_before(self, tier: int) -> bool:
        """Whether any tier before `tier` has a message queued or a batch running."""
        return any(self._running[:tier]) or any(queue.qsize() for at, queue in self._queues if at < tier)

    async def wait(self, tier: int = LAST) -> None:
        """Until every earlier tier is idle, or `limit` seconds at most (at once if they are idle)."""
        if self.limit <= 0.0 or not self.busy_before(tier):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limit
        while self.busy_before(tier) and (left := deadline - loop.time()) > 0.0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()
