"""Publishing the synthetic feed to Redis pub/sub: paced like the real feed, or as a burst."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence

from redis.asyncio import Redis

from enricher.feed.synthetic import Message, SyntheticFeed

# Where a batch goes instead of PUBLISH, e.g. bridge.StreamWriter.write for `feed --streams`.
Sink = Callable[[Sequence[Message]], Awaitable[None]]


async def publish_paced(
    redis: Redis,
    feed: SyntheticFeed,
    *,
    rate: float = 1.0,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    sink: Sink | None = None,
) -> dict[str, int]:
    """Publish `feed.loop()` `rate` times a second until `duration` seconds pass or `stop` is set.

    Each loop goes out in one pipeline. Loops are scheduled on a fixed grid, sleeping
    only what is left of each period, so the rate does not drift with publish time; a
    loop that falls more than a period behind skips the missed slots instead of
    bursting to catch up. Returns the number of messages published per channel.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    period = 1.0 / rate
    clock = asyncio.get_running_loop()
    began = clock.time()
    deadline = None if duration is None else began + duration
    counts: dict[str, int] = {}
    next_at = began
    while not (stop is not None and stop.is_set()):
        if deadline is not None and clock.time() >= deadline:
            break
        await _publish(redis, feed.loop(), counts, sink)
        next_at = max(next_at + period, clock.time())
        wake = next_at if deadline is None else min(next_at, deadline)
        await _sleep_until(clock, wake, stop)
    return counts


async def publish_burst(
    redis: Redis, messages: Iterable[Message], *, pipeline_size: int = 500, sink: Sink | None = None
) -> dict[str, int]:
    """Publish `messages` as fast as Redis takes them, `pipeline_size` per round trip.

    Returns the number of messages published per channel.
    """
    if pipeline_size < 1:
        raise ValueError("pipeline_size must be at least 1")
    counts: dict[str, int] = {}
    batch: list[Message] = []
    for message in messages:
        batch.append(message)
        if len(batch) >= pipeline_size:
            await _publish(redis, batch, counts, sink)
            batch = []
    if batch:
        await _publish(redis, batch, counts, sink)
    return counts


async def _publish(redis: Redis, messages: list[Message], counts: dict[str, int], sink: Sink | None) -> None:
    if sink is not None:
        await sink(messages)
    else:
        # No MULTI: pub/sub needs no atomicity, only fewer round trips.
        async with redis.pipeline(transaction=False) as pipe:
            for channel, payload in messages:
                pipe.publish(channel, payload)
            await pipe.execute()
    for channel, _ in messages:
        counts[channel] = counts.get(channel, 0) + 1


async def _sleep_until(clock: asyncio.AbstractEventLoop, wake: float, stop: asyncio.Event | None) -> None:
    delay = wake - clock.time()
    if delay <= 0:
        return
    if stop is None:
        await asyncio.sleep(delay)
        return
    # Wait on the event itself, so a stop ends the sleep at once.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
