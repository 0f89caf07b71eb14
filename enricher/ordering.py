"""Keeping state in arrival order when several workers share a channel.

Workers overlap their I/O (idempotency claims, pool calls, Redis and MongoDB writes), but
the steps that change in-memory state (candles, the surface) must see batches in the order
they left the queue, or an older batch could roll a candle back. A `TurnTaker` hands out a
ticket per batch and lets each through its stateful step only after every earlier one.
"""

from __future__ import annotations

import asyncio


class TurnTaker:
    def __init__(self) -> None:
        self._issued = 0
        self._serving = 0
        self._finished: set[int] = set()
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def ticket(self) -> int:
        ticket = self._issued
        self._issued += 1
        return ticket

    async def turn(self, ticket: int) -> None:
        if ticket == self._serving:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        try:
            await waiter
        finally:
            self._waiters.pop(ticket, None)

    def done(self, ticket: int) -> None:
        """Finish `ticket`, whether or not it took its turn (a failed or cancelled batch)."""
        self._finished.add(ticket)
        while self._serving in self._finished:
            self._finished.remove(self._serving)
            self._serving += 1
        waiter = self._waiters.get(self._serving)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
