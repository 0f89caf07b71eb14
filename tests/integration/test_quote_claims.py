"""Quotes without persistence are claimed in their cache write: one script call a batch.

A duplicate quote's output is the same value with the same stamp, so writing it again changes
nothing; what the claims decide is each message's outcome, and whether a redelivering source
may forget it (settle) or must keep it (defer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from enricher.cache import Cache, Outputs
from enricher.embedded import RedisServer
from enricher.idempotency import Claim, mark_key
from enricher.messages import parse
from enricher.records import OPTION_QUOTE
from enricher.settings import Settings
from enricher.source import RawMessage
from tests.conftest import sample
from tests.integration.helpers import pipeline_on, with_fields

QUOTE = sample("synthetic_option_quote.json")
SYMBOL = orjson.loads(QUOTE)["symbol"]


@dataclass
class Receipt:
    """Records what the pipeline did with a message, as a redelivering source would see it."""

    calls: list[str] = field(default_factory=list)

    def settle(self) -> None:
        self.calls.append("settle")

    def defer(self) -> None:
        self.calls.append("defer")


def message(payload: bytes = QUOTE) -> tuple[RawMessage, Receipt]:
    receipt = Receipt()
    return RawMessage(OPTION_QUOTE, payload, time.time(), receipt), receipt


def key_of(payload: bytes, settings: Settings) -> str:
    return mark_key("quote", parse(OPTION_QUOTE, payload, feed_tz=settings.tz).identity)


async def test_a_quote_is_claimed_done_with_its_write_and_its_redelivery_is_a_duplicate(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings(persist=False)
    async with pipeline_on(redis, settings) as pipeline:
        first, first_receipt = message()
        assert await pipeline.handle(OPTION_QUOTE, [first]) == ["processed"]
        assert await redis.get(f"latest:option:{SYMBOL}") == QUOTE  # the quote as received
        key = key_of(QUOTE, settings)
        assert await redis.get(key) == b"d"  # done at once: its cache write is its result
        assert 0 < await redis.ttl(key) <= settings.idem_done_ttl
        assert first_receipt.calls == ["settle"]

        again, again_receipt = message()
        twin, twin_receipt = message()
        assert await pipeline.handle(OPTION_QUOTE, [again, twin]) == ["duplicate", "duplicate"]
        assert again_receipt.calls == twin_receipt.calls == ["settle"]
        assert pipeline._metrics.total("processed") == 1
        assert pipeline._metrics.total("duplicate") == 2

        # The same symbol and time with other content (a feed bug) is the same message: the
        # first one stays, as when the claim came first.
        other = with_fields(QUOTE, bid=orjson.loads(QUOTE)["bid"] + 1.0)
        clash, _ = message(other)
        assert await pipeline.handle(OPTION_QUOTE, [clash]) == ["duplicate"]
        assert await redis.get(f"latest:option:{SYMBOL}") == QUOTE


async def test_a_quote_another_delivery_holds_is_deferred_and_left_to_it(
    make_settings: Callable[..., Settings], redis: Redis
) -> None:
    settings = make_settings(persist=False)
    held = with_fields(QUOTE, timestamp="2025-01-20T10:15:31.000000")
    fresh = with_fields(QUOTE, timestamp="2025-01-20T10:15:32.000000")
    await redis.set(key_of(held, settings), "p", px=30_000)  # another delivery is storing it
    async with pipeline_on(redis, settings) as pipeline:
        (busy, busy_receipt), (new, new_receipt) = message(held), message(fresh)
        assert await pipeline.handle(OPTION_QUOTE, [busy, new]) == ["duplicate", "processed"]
    assert busy_receipt.calls == ["defer"]  # not acknowledged: the holder may still fail
    assert new_receipt.calls == ["settle"]
    assert await redis.get(key_of(held, settings)) == b"p"  # still the holder's
    assert await redis.get(key_of(fresh, settings)) == b"d"
    assert await redis.get(f"latest:option:{SYMBOL}") == fresh  # the newer of the two


async def test_write_claiming_writes_first_and_leaves_claimed_keys_alone(redis: Redis) -> None:
    outputs = Outputs()
    outputs.set("latest:option:X", b'{"q": 1}', 60, "2025-01-20T10:00:00.000000+00:00")
    await redis.set("mark:done", "d")
    await redis.set("mark:busy", "p", px=30_000)
    claims = await Cache(redis).write_claiming(outputs, ["mark:done", "mark:busy", "mark:new"], 3600)
    assert claims == [Claim.DONE, Claim.BUSY, Claim.NEW]
    assert await redis.get("latest:option:X") == b'{"q": 1}'
    assert await redis.get("mark:busy") == b"p"
    assert await redis.get("mark:new") == b"d"
    assert 3500 < await redis.ttl("mark:new") <= 3600
    assert await redis.ttl("mark:done") == -1  # untouched: no TTL was set on it

    same_time = Outputs()  # the stamp it holds: only a message of the same identity has it
    same_time.set("latest:option:X", b'{"q": 2}', 60, "2025-01-20T10:00:00.000000+00:00")
    assert await Cache(redis).write_claiming(same_time, ["mark:new"], 3600) == [Claim.DONE]
    assert await redis.get("latest:option:X") == b'{"q": 1}'
    await Cache(redis).write(same_time)  # a plain write takes an equal stamp
    assert await redis.get("latest:option:X") == b'{"q": 2}'


async def test_a_quote_batch_redis_refuses_is_dead_lettered(
    make_settings: Callable[..., Settings],
) -> None:
    with RedisServer() as server:
        redis = Redis.from_url(server.url)
        try:
            settings = make_settings(redis_url=server.url, persist=False, retry_attempts=2, retry_base=0.01)
            async with pipeline_on(redis, settings) as pipeline:
                server.kill()
                raw, receipt = message()
                assert await pipeline.handle(OPTION_QUOTE, [raw]) == ["failed"]
                assert pipeline._dead.pending == 1  # kept for Redis's return
                assert receipt.calls == []  # settled only once its dead letter is written
        finally:
            await redis.aclose()


async def test_a_failed_quote_batch_releases_no_mark_it_did_not_claim(
    make_settings: Callable[..., Settings], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(persist=False)
    key = key_of(QUOTE, settings)
    await redis.set(key, "d")  # stored by an earlier delivery
    async with pipeline_on(redis, settings) as pipeline:

        def broken(*args: Any) -> Any:
            raise RuntimeError("a bug in the quote state")

        monkeypatch.setattr(pipeline.state, "quotes", broken)
        raw, _ = message()
        assert await pipeline.handle(OPTION_QUOTE, [raw]) == ["failed"]
    assert await redis.get(key) == b"d"  # nothing was claimed here, so nothing is released
