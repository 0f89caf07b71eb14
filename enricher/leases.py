"""Who reads which partition: membership and partition leases, kept in Redis itself.

Every instance heartbeats into one sorted set (score: when its membership lapses, on Redis's
clock). All live members see the same sorted list, so they all compute the same assignment
without talking to each other: partition k belongs to `members[k % len(members)]`.

An assignment alone is not ownership. An instance reads partition k only while it holds
the lease `enricher:lease:{group}:{k}` (SET NX PX, renewed each round). That makes the
hand-over safe in both directions:
- a partition that moves away is first drained (everything taken from it is settled), and
  only then its lease deleted, so the new owner continues in stream order;
- an instance that dies stops renewing: after `ttl` its membership and leases lapse, the
  others recompute, take its partitions and claim its pending entries.

At most one instance holds a partition at any time, unless one stalls for longer than the
lease (a long GC pause, a network partition); then two may overlap briefly, and the
idempotency marks keep the results single.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.errors import honour_cancel
from enricher.redact import redact_text

log = structlog.get_logger("enricher.leases")

_HEARTBEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
# Renew the leases we hold; take the free ones we are assigned. Returns what we hold now.
_LEASES: Final = """
local held = {}
for i, key in ipairs(KEYS) do
    local owner = redis.call('GET', key)
    if owner == ARGV[1] then
        redis.call('PEXPIRE', key, ARGV[2])
        held[#held + 1] = i
    elseif not owner and ARGV[2 + i] == '1' then
        redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
        held[#held + 1] = i
    end
end
return held
"""
_RELEASE: Final = """
local n = 0
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""


def assignment(members: list[str], partitions: int, me: str) -> set[int]:
    """The partitions `me` should own, given every live member (the same answer on each)."""
    if me not in members:
        return set()
    index, count = members.index(me), len(members)
    return {k for k in range(partitions) if k % count == index}


class Leases:
    def __init__(self, redis: Redis, group: str, me: str, partitions: int, ttl: float) -> None:
        self._redis = redis
        self.me = me
        self.partitions = partitions
        self._ttl_ms = max(1, int(ttl * 1000))
        self._members_key = f"enricher:members:{group}"
        self._lease_keys = [f"enricher:lease:{group}:{k}" for k in range(partitions)]
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._leases = redis.register_script(_LEASES)
        self._release = redis.register_script(_RELEASE)
        self.members: list[str] = []
        self.held: set[int] = set()  # leases we hold
        self.wanted: set[int] = set()  # what the assignment gives us

    async def round(self) -> None:
        """Heartbeat, recompute the assignment, renew or take leases. Call every ttl/3."""
        replies = await self._heartbeat(keys=[self._members_key], args=[self.me, self._ttl_ms])
        members = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in replies)
        wanted = assignment(members, self.partitions, self.me)
        take = ["1" if k in wanted else "0" for k in range(self.partitions)]
        held = await self._leases(keys=self._lease_keys, args=[self.me, self._ttl_ms, *take])
        held_now = {int(i) - 1 for i in held}
        if members != self.members or held_now != self.held:
            log.info("partitions", members=len(members), wanted=sorted(wanted), held=sorted(held_now))
        self.members, self.wanted, self.held = members, wanted, held_now

    async def release(self, partitions: Iterable[int]) -> None:
        chosen = list(partitions)
        if chosen:
            await self._release(keys=[self._lease_keys[k] for k in chosen], args=[self.me])
            self.held.difference_update(chosen)

    async def leave(self) -> None:
        """A clean exit: give every lease back and leave the membership, so others take over now."""
        await self.release(list(self.held))
        await self._redis.zrem(self._members_key, self.me)


async def keep_alive(leases: Leases, interval: float, changed: asyncio.Event) -> None:
    """Run rounds forever; a failed round (Redis away) is retried, and leases lapse by themselves."""
    while True:
        before = (set(leases.held), set(leases.wanted))
        try:
            await leases.round()
        except (RedisError, OSError) as exc:
            log.warning("lease_round_failed", error=redact_text(str(exc))[:200])
        # After every round, not only a failed one: redis-py has been seen to swallow a
        # cancel and return, and a loop that goes on keeps a stopped instance a member.
        honour_cancel()
        if (leases.held, leases.wanted) != before:
            changed.set()
        await asyncio.sleep(interval)
