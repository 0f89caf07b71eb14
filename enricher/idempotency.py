"""Duplicate-delivery filter: Redis marks keyed by each message's content identity.

A delivery first *claims* its identity with a short-lived in-progress mark. Only after its
results are durable (MongoDB acknowledged, or the cache written when persistence is off)
does the mark become *done*, with a long TTL. A failure releases the claim, and a crash
lets it expire after `inflight_ttl`, so a redelivery is never skipped as a duplicate before
its data is stored. MongoDB's unique `_id` on the same identity stays the source of truth.
Quotes without persistence are claimed as done in the script call that writes their cache
keys, which is their whole result (`cache.Cache.write_claiming`, `claim_lua` here).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

import orjson
from redis.asyncio import Redis

PREFIX: Final = "enricher:seen:"


class Claim(enum.Enum):
    NEW = "new"  # this delivery owns the message
    DONE = "done"  # already stored: a duplicate
    BUSY = "busy"  # another delivery is processing it right now


def mark_key(kind: str, identity: str) -> str:
    return f"{PREFIX}{kind}:{identity}"


def claim_lua(mark: str, expiry: str, ttl: str) -> str:
    """Claiming `key`, as a piece of script: `answer[i]` becomes a digit of the reply, 0 for NEW,
    1 for DONE and 2 for BUSY (`claims`). A NEW key holds `mark` for `ttl` (`expiry`: PX or EX)."""
    return f"""
    if redis.call('SET', key, '{mark}', 'NX', '{expiry}', {ttl}) then
        answer[i] = '0'
    elseif redis.call('GET', key) == 'd' then
        answer[i] = '1'
    else
        answer[i] = '2'
    end"""


# One script call per batch, its keys in ONE argument (a JSON array, decoded by the script's
# cjson) and its answer in one string, a digit per key: redis-py then packs three arguments
# and parses one reply, whatever the batch's size. (Keys passed as arguments, not KEYS, are
# fine on one server; enricher does not support Redis Cluster.)
_CLAIM: Final = f"""
local answer = {{}}
for i, key in ipairs(cjson.decode(ARGV[2])) do{claim_lua("p", "PX", "ARGV[1]")}
end
return table.concat(answer)
"""
# Marking done, as a piece of script: `done` is a decoded array of keys, `done_ttl` seconds.
# Also inside cache.py's write, which with persistence off marks them in the same call.
DONE_LUA: Final = """
for _, key in ipairs(done) do redis.call('SET', key, 'd', 'EX', done_ttl) end
"""
_DONE: Final = f"""
local done, done_ttl = cjson.decode(ARGV[2]), ARGV[1]
{DONE_LUA}
return #done
"""
_CLAIMS: Final = (Claim.NEW, Claim.DONE, Claim.BUSY)
_ZERO: Final = ord("0")


class Idempotency:
    def __init__(self, redis: Redis, *, inflight_ttl: float, done_ttl: int) -> None:
        self._redis = redis
        self._inflight_ms = max(1, int(inflight_ttl * 1000))
        self._done_ttl = done_ttl
        self._claim = redis.register_script(_CLAIM)
        self._done = redis.register_script(_DONE)

    async def claim(self, keys: Sequence[str]) -> list[Claim]:
        if not keys:
            return []
        return claims(await self._claim(keys=[], args=[self._inflight_ms, orjson.dumps(keys)]))

    @property
    def done_ttl(self) -> int:
        return self._done_ttl

    async def mark_done(self, keys: Sequence[str]) -> None:
        if keys:
            await self._done(keys=[], args=[self._done_ttl, orjson.dumps(keys)])

    async def release(self, keys: Sequence[str]) -> None:
        if keys:
            await self._redis.delete(*keys)


def claims(reply: bytes) -> list[Claim]:
    """A claiming script's answer, a digit per key (`claim_lua`)."""
    return [_CLAIMS[digit - _ZERO] for digit in reply]
