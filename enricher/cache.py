"""Redis outputs, named exactly as CONTRACT.md §2–§3 says: latest:* keys, candles, surfaces, publishes.

A batch of messages collects its writes in an `Outputs`, and one pipeline sends them. Keys
are conflated: when a batch sets a key twice only the newest value is sent. Publishes are
never conflated.

Every key is written with a *stamp* (the event time, or a state version), through a Lua
script that refuses to replace a newer value with an older one. Workers, instances and the
feed itself can all deliver out of order; a `latest:*` key still only moves forward. The
stamp lives next to the key in `enricher:stamp:{key}`, with the same TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from redis.asyncio import Redis

ENRICHED_UNDERLYING: Final = "enriched:underlying"
ENRICHED_CHAIN: Final = "enriched:option_chain"
STAMP_PREFIX: Final = "enricher:stamp:"

# Stamps are fixed-width strings, so byte order is time order.
_SET_IF_NEWER: Final = """
local current = redis.call('GET', KEYS[2])
if current and current > ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2])
return 1
"""
_REPLACE_ZSET_IF_NEWER: Final = """
local current = redis.call('GET', KEYS[2])
if current and current > ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""


def underlying_key(product: str) -> str:
    return f"latest:underlying:{product}"


def option_key(symbol: str) -> str:
    return f"latest:option:{symbol}"


def chain_key(product: str, expiry: str) -> str:
    return f"latest:chain:{product}:{expiry}"


def pcr_key(product: str, expiry: str) -> str:
    return f"latest:pcr:{product}:{expiry}"


def ohlc_key(product: str, window_minutes: int) -> str:
    return f"ohlc:{product}:{window_minutes}m"


def surface_key(product: str) -> str:
    return f"volatility_surface:{product}"


def iv_surface_key(product: str) -> str:
    return f"iv_surface:{product}"


@dataclass(slots=True)
class Outputs:
    keys: dict[str, tuple[bytes, int, str]] = field(default_factory=dict)  # key -> (value, ttl, stamp)
    publishes: list[tuple[str, bytes]] = field(default_factory=list)
    sorted_sets: dict[str, tuple[list[tuple[bytes, float]], str]] = field(default_factory=dict)

    def set(self, key: str, value: bytes, ttl: int, stamp: str) -> None:
        held = self.keys.get(key)
        if held is None or held[2] <= stamp:
            self.keys[key] = (value, ttl, stamp)

    def publish(self, channel: str, data: bytes) -> None:
        self.publishes.append((channel, data))

    def replace_sorted_set(self, key: str, members: list[tuple[bytes, float]], stamp: str) -> None:
        held = self.sorted_sets.get(key)
        if held is None or held[1] <= stamp:
            self.sorted_sets[key] = (members, stamp)

    def __len__(self) -> int:
        return len(self.keys) + len(self.publishes) + len(self.sorted_sets)


class Cache:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._set_if_newer = redis.register_script(_SET_IF_NEWER)
        self._replace_zset = redis.register_script(_REPLACE_ZSET_IF_NEWER)

    async def write(self, outputs: Outputs) -> None:
        if not outputs:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, (value, ttl, stamp) in outputs.keys.items():
                await self._set_if_newer(keys=[key, STAMP_PREFIX + key], args=[value, ttl, stamp], client=pipe)
            for key, (members, stamp) in outputs.sorted_sets.items():
                # Rewriting the whole set from the current surface is what bounds it: the old
                # service only ever added members, and the set grew without limit.
                args: list[bytes | str | float] = [stamp]
                for member, score in members:
                    args += [score, member]
                await self._replace_zset(keys=[key, STAMP_PREFIX + key], args=args, client=pipe)
            for channel, data in outputs.publishes:
                pipe.publish(channel, data)
            await pipe.execute()
