"""Cache.write against a real Redis: values small (inside the JSON batch) and large (blobs,
passed as arguments of their own) arrive byte for byte, and stale stamps never overwrite."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from enricher.cache import BLOB, STAMP_PREFIX, Cache, Outputs
from enricher.idempotency import PREFIX


async def _published(listener: Any) -> list[bytes]:
    out = []
    while (event := await listener.get_message(timeout=0.5)) is not None:
        if event["type"] == "message":
            out.append(event["data"])
    return out


async def test_small_and_large_values_arrive_byte_for_byte(redis: Redis) -> None:
    small = '{"price": 1.5, "note": "quote \\" and é"}'.encode()
    large = b'{"rows": "' + b"x" * BLOB + b'", "q": "\\"", "u": "\xc3\xa9"}'
    shared = b'{"chain": "' + b"y" * (2 * BLOB) + b'"}'  # a key's value and a publish: one copy sent
    outputs = Outputs()
    outputs.set("latest:small", small, 60, "2025-01-20T10:00:00.000000+00:00")
    outputs.set("latest:large", large, 60, "2025-01-20T10:00:00.000000+00:00")
    outputs.set("latest:shared", shared, 60, "2025-01-20T10:00:00.000000+00:00")
    outputs.publish("enriched:test", shared)
    outputs.publish("enriched:test", small)
    odd = 0.1 + 0.2  # 0.30000000000000004: a score must come back to the bit
    members = [(b'{"strike": 100.0}', 100.0), (b'{"strike": 99.5}', 99.5), (b'{"strike": "odd"}', odd)]
    outputs.replace_sorted_set("iv:test", members, "s1")
    listener = redis.pubsub()
    await listener.subscribe("enriched:test")
    assert (await listener.get_message(timeout=5))["type"] == "subscribe"

    await Cache(redis).write(outputs, [f"{PREFIX}tick:a", f"{PREFIX}tick:b"], 3600)

    assert await redis.get("latest:small") == small
    assert await redis.get("latest:large") == large
    assert await redis.get("latest:shared") == shared
    assert 0 < await redis.ttl("latest:large") <= 60
    assert await redis.get(STAMP_PREFIX + "latest:large") == b"2025-01-20T10:00:00.000000+00:00"
    assert await redis.zrange("iv:test", 0, -1, withscores=True) == [
        (b'{"strike": "odd"}', odd),
        (b'{"strike": 99.5}', 99.5),
        (b'{"strike": 100.0}', 100.0),
    ]
    assert await redis.get(f"{PREFIX}tick:a") == b"d"
    assert 3500 < await redis.ttl(f"{PREFIX}tick:b") <= 3600
    assert await _published(listener) == [shared, small]
    await listener.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py


async def test_an_older_stamp_never_replaces_a_newer_value(redis: Redis) -> None:
    cache = Cache(redis)
    newer, older = Outputs(), Outputs()
    newer.set("latest:k", b"N" * BLOB, 60, "2025-01-20T10:00:01.000000+00:00")
    older.set("latest:k", b"O" * BLOB, 60, "2025-01-20T10:00:00.000000+00:00")
    await cache.write(newer)
    await cache.write(older)
    assert await redis.get("latest:k") == b"N" * BLOB
