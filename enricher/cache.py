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

# One script call per batch writes every key (set-if-newer), replaces the sorted sets and
# publishes: redis-py then parses one reply, not one per command. Stamps are fixed-width
# strings, so byte order is time order.
#   KEYS: key, stamp key for each set; then key, stamp key for each sorted set
#   ARGV: #sets, #sorted sets, #publishes; value, ttl, stamp per set;
#         stamp, member count, (score, member)... per sorted set; channel, data per publish
_WRITE: Final = """
local sets, zsets, pubs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a, k = 4, 1
for _ = 1, sets do
    local current = redis.call('GET', KEYS[k + 1])
    if not current or current <= ARGV[a + 2] then
        redis.call('SET', KEYS[k], ARGV[a], 'EX', ARGV[a + 1])
        redis.call('SET', KEYS[k + 1], ARGV[a + 2], 'EX', ARGV[a + 1])
    end
    a, k = a + 3, k + 2
end
for _ = 1, zsets do
    local stamp, count = ARGV[a], tonumber(ARGV[a + 1])
    a = a + 2
    local current = redis.call('GET', KEYS[k + 1])
    if not current or current <= stamp then
        redis.call('DEL', KEYS[k])
        for i = 0, count - 1 do redis.call('ZADD', KEYS[k], ARGV[a + 2 * i], ARGV[a + 2 * i + 1]) end
        redis.call('SET', KEYS[k + 1], stamp)
    end
    a, k = a + 2 * count, k + 2
end
for _ = 1, pubs do
    redis.call('PUBLISH', ARGV[a], ARGV[a + 1])
    a = a + 2
end
return sets + zsets + pubs
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
        self.redis = redis
        self._write = redis.register_script(_WRITE)

    async def write(self, outputs: Outputs) -> None:
        if not outputs:
            return
        keys: list[str] = []
        args: list[bytes | str | int | float] = [len(outputs.keys), len(outputs.sorted_sets), len(outputs.publishes)]
        for key, (value, ttl, stamp) in outputs.keys.items():
            keys += (key, STAMP_PREFIX + key)
            args += (value, ttl, stamp)
        for key, (members, stamp) in outputs.sorted_sets.items():
            # Rewriting the whole set from the current surface is what bounds it: the old
            # service only ever added members, and the set grew without limit.
            keys += (key, STAMP_PREFIX + key)
            args += (stamp, len(members))
            for member, score in members:
                args += (score, member)
        for channel, data in outputs.publishes:
            args += (channel, data)
        await self._write(keys=keys, args=args)
