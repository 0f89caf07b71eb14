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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson
from redis.asyncio import Redis

from enricher.idempotency import DONE_LUA, Claim, claim_lua, claims

ENRICHED_UNDERLYING: Final = "enriched:underlying"
ENRICHED_CHAIN: Final = "enriched:option_chain"
STAMP_PREFIX: Final = "enricher:stamp:"

# One script call per batch writes every key (set-if-newer), replaces the sorted sets and
# publishes: redis-py then parses one reply, not one per command. The whole batch goes as ONE
# argument, a JSON array that the script decodes with Redis's built-in cjson: redis-py packs
# each argument in Python (its pack_command was ~15% of the event loop at 10x the feed's pace,
# py-spy), orjson packs the array in C. A value of BLOB bytes or more (an enriched chain, a
# surface) travels instead as an argument of its own, binary, which the array names by its
# index: cjson would decode it for nothing, and a chain's key and its publish share one copy.
# Smaller values are orjson output, so valid UTF-8, and survive the round trip as JSON strings
# byte for byte. Stamps are fixed-width strings, so byte order is time order. Keys travel in
# the argument too, not in KEYS: fine on one Redis server, not on Redis Cluster, which
# enricher does not support (README, "Scaling out").
#   ARGV[1]: [sets, sorted sets, publishes, done marks, done ttl(, claims)]
#     sets: [key, value, ttl, stamp] each;  sorted sets: [key, stamp, [score, member, ...]] each;
#     publishes: [channel, value] each;  a value is a string, or the index in ARGV of a blob;
#     done marks: idempotency keys, given with persistence off, where the cache is the durable
#     result (idempotency.py), marked in the same call;
#     claims: idempotency keys claimed in the same call, after the writes, as done at once
#     (`write_claiming`); the answer is then a digit per key, as the claim script's, and a
#     key whose stamp equals the value's keeps its value (the same message wrote it)
#   ARGV[2...]: the blobs
BLOB: Final = 1024
ZADD_ARGS: Final = 1000  # scores and members per ZADD: one call for a surface, well inside Lua's stack
_WRITE: Final = f"""
local batch = cjson.decode(ARGV[1])
local prefix = '{STAMP_PREFIX}'
local ZADD_ARGS = {ZADD_ARGS}
local function value(v)
    if type(v) == 'number' then return ARGV[v] end
    return v
end
-- When claiming, a key's equal stamp means a message of the same identity wrote it: keep it.
local strict = batch[6] ~= nil
for _, s in ipairs(batch[1]) do
    local stamp_key = prefix .. s[1]
    local current = redis.call('GET', stamp_key)
    if not current or current < s[4] or (current == s[4] and not strict) then
        redis.call('SET', s[1], value(s[2]), 'EX', s[3])
        redis.call('SET', stamp_key, s[4], 'EX', s[3])
    end
end
for _, z in ipairs(batch[2]) do
    local key, stamp, members = z[1], z[2], z[3]
    local stamp_key = prefix .. key
    local current = redis.call('GET', stamp_key)
    if not current or current <= stamp then
        redis.call('DEL', key)
        for i = 1, #members, ZADD_ARGS do
            redis.call('ZADD', key, unpack(members, i, math.min(i + ZADD_ARGS - 1, #members)))
        end
        redis.call('SET', stamp_key, stamp)
    end
end
for _, p in ipairs(batch[3]) do
    redis.call('PUBLISH', p[1], value(p[2]))
end
local done, done_ttl = batch[4], batch[5]
{DONE_LUA}
if batch[6] then
    local answer = {{}}
    for i, key in ipairs(batch[6]) do{claim_lua("d", "EX", "done_ttl")}
    end
    return table.concat(answer)
end
return #batch[1] + #batch[2] + #batch[3]
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

    async def write(self, outputs: Outputs, done: Sequence[str] = (), done_ttl: int = 0) -> None:
        """Write `outputs`, and mark `done` (idempotency keys) done for `done_ttl` seconds."""
        if outputs or done:
            await self._write(keys=[], args=self._arguments(outputs, done, done_ttl))

    async def write_claiming(self, outputs: Outputs, keys: Sequence[str], done_ttl: int) -> list[Claim]:
        """Write `outputs`, then claim `keys` as done for `done_ttl` seconds, in one call; return
        each key's claim. Only for outputs whose stamp is their message's identity (a quote's
        cache key: symbol and event time): a duplicate's is then refused by its equal stamp, and
        a key already claimed is left as it is."""
        return claims(await self._write(keys=[], args=self._arguments(outputs, (), done_ttl, keys)))

    @staticmethod
    def _arguments(
        outputs: Outputs, done: Sequence[str], done_ttl: int, claiming: Sequence[str] | None = None
    ) -> list[bytes]:
        blobs: list[bytes] = []
        index: dict[int, int] = {}  # id(value) -> its ARGV index: one copy of a value used twice

        def ref(value: bytes) -> str | int:
            if len(value) < BLOB:
                return value.decode()
            at = index.get(id(value))
            if at is None:
                blobs.append(value)
                at = index[id(value)] = len(blobs) + 1  # ARGV[1] is the batch itself
            return at

        sets = [(key, ref(value), ttl, stamp) for key, (value, ttl, stamp) in outputs.keys.items()]
        # Rewriting the whole set from the current surface is what bounds it: the old
        # service only ever added members, and the set grew without limit.
        zsets = [
            (key, stamp, [part for member, score in members for part in (score, member.decode())])
            for key, (members, stamp) in outputs.sorted_sets.items()
        ]
        publishes = [(channel, ref(data)) for channel, data in outputs.publishes]
        batch = (sets, zsets, publishes, done, done_ttl) + (() if claiming is None else (claiming,))
        return [orjson.dumps(batch), *blobs]
