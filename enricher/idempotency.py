"""Duplicate-delivery filter: Redis marks keyed by each message's content identity.

A delivery first *claims* its identity with a short-lived in-progress mark. Only after its
results are durable (MongoDB acknowledged, or the cache written when persistence is off)
does the mark become *done*, with a long TTL. A failure releases the claim, and a crash
lets it expire after `inflight_ttl`, so a redelivery is never skipped as a duplicate before
its data is stored. MongoDB's unique `_id` on the same identity stays the source of truth.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

from redis.asyncio import Redis

PREFIX: Final = "enricher:seen:"
_INFLIGHT: Final = b"p"
_DONE: Final = b"d"


class Claim(enum.Enum):
    NEW = "new"  # this delivery owns the message
    DONE = "done"  # already stored: a duplicate
    BUSY = "busy"  # another delivery is processing it right now


def mark_key(kind: str, identity: str) -> str:
    return f"{PREFIX}{kind}:{identity}"


class Idempotency:
    def __init__(self, redis: Redis, *, inflight_ttl: float, done_ttl: int) -> None:
        self._redis = redis
        self._inflight_ms = max(1, int(inflight_ttl * 1000))
        self._done_ttl = done_ttl

    async def claim(self, keys: Sequence[str]) -> list[Claim]:
        if not keys:
            return []
        # MULTI makes each SET NX + GET pair atomic (SET ... NX GET needs Redis 7).
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.set(key, _INFLIGHT, nx=True, px=self._inflight_ms)
                pipe.get(key)
            replies = await pipe.execute()
        claims = []
        for won, value in zip(replies[0::2], replies[1::2], strict=True):
            if won:
                claims.append(Claim.NEW)
            else:
                claims.append(Claim.DONE if value == _DONE else Claim.BUSY)
        return claims

    async def mark_done(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, _DONE, ex=self._done_ttl)
            await pipe.execute()

    async def release(self, keys: Sequence[str]) -> None:
        if keys:
            await self._redis.delete(*keys)
