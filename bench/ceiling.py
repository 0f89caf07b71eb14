"""SecantusDB's own write ceiling: the burst's documents, bulk-inserted from this process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bench import harness
from bench.common import cpu_seconds
from enricher.feed.synthetic import Message
from enricher.records import OPTION_CHAIN
from enricher.store import INDEXES


@dataclass
class Ceiling:
    seconds: float  # from the first insert_many to the last one's reply
    mongo_cpu: float  # SecantusDB's CPU seconds meanwhile
    stored: int  # documents counted afterwards
    bench_cpu: float  # this process's CPU seconds meanwhile (BSON encoding, mostly)


def stored_doc(channel: str, payload: bytes, now: datetime) -> dict[str, Any]:
    """A document shaped like the one enricher stores for this message (CONTRACT §4–§5)."""
    doc: dict[str, Any] = orjson.loads(payload)
    doc["_id"] = harness.stored_id(channel, doc)
    doc["timestamp"] = harness.event_time(doc["timestamp"])
    doc["processed_at"] = now
    if channel == OPTION_CHAIN:
        spot = doc["spot_price"]
        doc |= {
            "pcr_oi": 1.0,
            "pcr_volume": 1.0,
            "atm_strike": spot,
            "atm_straddle_price": 1.0,
            "max_pain_strike": spot,
            "total_call_oi": 1,
            "total_put_oi": 1,
            "call_buildup_otm": 1,
            "put_buildup_otm": 1,
        }
    return doc


async def insert_all(
    ctx: harness.Context, messages: Sequence[Message], batch: int, *, concurrent: bool = False
) -> Ceiling:
    """Unordered insert_many of `batch` documents per collection, in the burst's order.

    One insert at a time; or, with `concurrent`, rounds of one insert per collection at
    once, as enricher's store flushes (asyncio.gather over its three collections).
    """
    now = datetime.now(UTC)
    docs = [(harness.COLLECTION_OF[channel], stored_doc(channel, payload, now)) for channel, payload in messages]
    db = ctx.mongo[f"bench_{next(ctx.serial):02d}_ceiling"]
    for name, models in INDEXES.items():  # the same indexes enricher creates
        await db[name].create_indexes(models)
    _, mongo = ctx.server_samplers()
    mongo.mark()
    own = cpu_seconds(os.getpid()) or 0.0
    sampling = asyncio.create_task(mongo.run())
    pending: dict[str, list[dict[str, Any]]] = {name: [] for name in harness.COLLECTIONS}
    try:
        start = time.perf_counter()
        if concurrent:
            for name, doc in docs:
                pending[name].append(doc)
            for i in range(0, max(len(queue) for queue in pending.values()), batch):
                chunks = [(name, queue[i : i + batch]) for name, queue in pending.items()]
                await asyncio.gather(*(db[n].insert_many(c, ordered=False) for n, c in chunks if c))
        else:
            for name, doc in docs:
                pending[name].append(doc)
                if len(pending[name]) >= batch:
                    await db[name].insert_many(pending[name], ordered=False)
                    pending[name] = []
            for name, rest in pending.items():
                if rest:
                    await db[name].insert_many(rest, ordered=False)
        seconds = time.perf_counter() - start
        cpu = mongo.cpu_since_mark()
        bench_cpu = (cpu_seconds(os.getpid()) or 0.0) - own
    finally:
        sampling.cancel()
    stored = sum([await db[name].count_documents({}) for name in harness.COLLECTIONS])
    await ctx.mongo.drop_database(db.name)
    return Ceiling(seconds, cpu, stored, bench_cpu)
