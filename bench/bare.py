"""The reference consumer: the least a Python pub/sub consumer can do per message.

It subscribes to the three market:* channels, parses every message with orjson, and for
each tick (chain) publishes `{"product", "timestamp"}` to enriched:underlying
(enriched:option_chain); quotes are parsed and counted only. The replies of each read
burst go out in one pipeline, on the same event loop as enricher (uvloop).
Usage: `python bench/bare.py REDIS_URL`; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import orjson
from redis.asyncio import Redis

from enricher.loop import run  # uvloop when installed, as enricher itself uses

UNDERLYING = "market:underlying"
OPTION_QUOTE = "market:option_quote"
OPTION_CHAIN = "market:option_chain"
REPLY_TO = {UNDERLYING.encode(): "enriched:underlying", OPTION_CHAIN.encode(): "enriched:option_chain"}
MAX_BURST = 500


async def consume(url: str, counts: dict[str, int]) -> None:
    redis = Redis.from_url(url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(UNDERLYING, OPTION_QUOTE, OPTION_CHAIN)
    try:
        while True:
            message = await pubsub.get_message(timeout=None)
            replies: list[tuple[str, bytes]] = []
            while message is not None:
                if message["type"] == "message":
                    counts["messages"] += 1
                    doc = orjson.loads(message["data"])
                    channel = REPLY_TO.get(message["channel"])
                    if channel is not None:
                        reply = {"product": doc["product"], "timestamp": doc["timestamp"]}
                        replies.append((channel, orjson.dumps(reply)))
                if len(replies) >= MAX_BURST:
                    break
                # Whatever is already read or waiting joins this burst; timeout=0 never blocks.
                message = await pubsub.get_message(timeout=0.0)
            if replies:
                async with redis.pipeline(transaction=False) as pipe:
                    for channel, data in replies:
                        pipe.publish(channel, data)
                    await pipe.execute()
                counts["replies"] += len(replies)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in older redis-py
        await redis.aclose()


async def main(url: str) -> int:
    counts = {"messages": 0, "replies": 0}
    task = asyncio.create_task(consume(url, counts))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"bare consumer stopped {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(main(sys.argv[1])))
