"""The reference consumer: the least a Python pub/sub consumer can do per message.

It subscribes to the three market:* channels, parses every message with orjson, and for
each tick (chain) publishes `{"product", "timestamp"}` to enriched:underlying
(enriched:option_chain); quotes are parsed and counted only. The replies of each read
burst go out in one pipeline, on the same event loop as enricher (uvloop).
Usage: `python bench/bare.py REDIS_URL`; SIGTERM stops it.

With `--analytics` it is the *analytics floor* instead: the same consumer, but each read
burst's chains go through enricher's own chain work, inline and in one batch as the daemon
does it (`messages.parse`, `chain_job`, `MarketState.chains`), and each chain's reply is its
enriched chain (~24 KB for 21 strikes) instead of the tiny one. None of the daemon's pipeline
is there: no queues, idempotency, ordering, priority, cache keys or stamps. Its latency is
what the contract's chain analytics cost a consumer on this machine before any plumbing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import orjson
from redis.asyncio import Redis

from enricher.loop import run  # uvloop when installed, as enricher itself uses

UNDERLYING = "market:underlying"
OPTION_QUOTE = "market:option_quote"
OPTION_CHAIN = "market:option_chain"
ENRICHED_CHAIN = "enriched:option_chain"
REPLY_TO = {UNDERLYING.encode(): "enriched:underlying", OPTION_CHAIN.encode(): ENRICHED_CHAIN}
MAX_BURST = 500


Reply = Callable[[list[bytes]], list[bytes]]


def enriched_chains() -> Reply:
    """The enriched chains of one burst's chain payloads, made by enricher's own code."""
    from datetime import UTC, datetime  # noqa: PLC0415  # only the floor loads enricher's kernels

    from enricher.analytics.jobs import chain_job  # noqa: PLC0415
    from enricher.messages import parse  # noqa: PLC0415
    from enricher.metrics import Metrics  # noqa: PLC0415
    from enricher.records import Chain  # noqa: PLC0415
    from enricher.settings import Settings  # noqa: PLC0415
    from enricher.state import MarketState  # noqa: PLC0415
    from enricher.warmup import warm_up  # noqa: PLC0415

    settings = replace(Settings(), persist=False)
    state = MarketState(settings, Metrics())

    def reply(payloads: list[bytes]) -> list[bytes]:
        chains = [
            cast("Chain", parse(OPTION_CHAIN, data, feed_tz=settings.tz, max_strikes=settings.max_strikes))
            for data in payloads
        ]
        results = chain_job(chains, state.previous(chains), state.model)
        items = [(chain, None, "") for chain in chains]
        applied = state.chains(items, results, datetime.now(UTC))  # type: ignore[arg-type]
        return [data for _, data in applied.outputs.publishes]

    warm_up(settings, settings.warm_up)  # as the daemon does before it subscribes
    return reply


async def consume(url: str, counts: dict[str, int], chain_replies: Reply | None = None) -> None:
    redis = Redis.from_url(url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(UNDERLYING, OPTION_QUOTE, OPTION_CHAIN)
    try:
        while True:
            message = await pubsub.get_message(timeout=None)
            replies: list[tuple[str, bytes]] = []
            chains: list[bytes] = []
            while message is not None:
                if message["type"] == "message":
                    counts["messages"] += 1
                    channel = REPLY_TO.get(message["channel"])
                    if chain_replies is not None and channel == ENRICHED_CHAIN:
                        chains.append(message["data"])
                    elif channel is not None:
                        doc = orjson.loads(message["data"])
                        reply = {"product": doc["product"], "timestamp": doc["timestamp"]}
                        replies.append((channel, orjson.dumps(reply)))
                    else:
                        orjson.loads(message["data"])
                if len(replies) + len(chains) >= MAX_BURST:
                    break
                # Whatever is already read or waiting joins this burst; timeout=0 never blocks.
                message = await pubsub.get_message(timeout=0.0)
            if chains and chain_replies is not None:
                replies += [(ENRICHED_CHAIN, data) for data in chain_replies(chains)]
            if replies:
                async with redis.pipeline(transaction=False) as pipe:
                    for channel, data in replies:
                        pipe.publish(channel, data)
                    await pipe.execute()
                counts["replies"] += len(replies)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py
        await redis.aclose()


async def main(url: str, analytics: bool) -> int:
    counts = {"messages": 0, "replies": 0}
    task = asyncio.create_task(consume(url, counts, enriched_chains() if analytics else None))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"bare consumer stopped {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main(sys.argv[1], "--analytics" in sys.argv[2:])))
