"""Hostile input through the real pipeline, on real servers.

Hypothesis draws plans of about 200 messages each: good ones from the synthetic feed, and bad
ones made from them (random and non-UTF-8 bytes, truncated or oversize payloads, JSON of the
wrong type, fields deleted, negated, made huge or replaced by random JSON, bad timestamps,
chains whose strikes disagree, a message on the wrong channel) plus byte-exact repeats.
`messages.parse` is the oracle. Nothing may escape `Pipeline.handle`, and each outcome must be
the one parse implies (invalid, processed, or duplicate of an identity already delivered). What
parse rejects is dead-lettered with its reason code and the payload byte for byte. Each message
it accepts is stored exactly once; only a mutated one may instead be refused by MongoDB and
dead-lettered (`mongo_write_error`), never both, never neither. The feed's own messages, and the
good tick that ends every plan, must be stored.

About 11,000 messages in all, in about 20 seconds. The fast suite leaves this out:

    .venv/bin/pytest -m "not slow"
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from enricher.app import Enricher
from enricher.deadletter import DLQ_KEY, payload_bytes
from enricher.feed.synthetic import SyntheticFeed
from enricher.messages import REASONS, parse
from enricher.metrics import DUPLICATE, FAILED, INVALID, PROCESSED, RECEIVED
from enricher.pipeline import COLLECTION, KIND
from enricher.records import CHANNELS, InvalidMessage
from enricher.source import RawMessage
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

StartApp = Callable[..., Awaitable[Enricher]]
Mongo = AsyncMongoClient[dict[str, Any]]
Message = tuple[str, bytes]

MAX_BYTES = 4096
MESSAGES_PER_PLAN = (200, 220)
HANDLE_EXAMPLES = 50
REDIS_EXAMPLES = 5
KINDS = (
    "good",
    "good",
    "good",
    "repeat",
    "random_bytes",
    "not_utf8",
    "truncated",
    "wrong_json_type",
    "delete_field",
    "replace_field",
    "negative",
    "huge",
    "bad_timestamp",
    "strike_mismatch",
    "oversize",
    "wrong_channel",
)
HUGE = (1e308, -1e308, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, 5e-324)
BAD_TIMESTAMPS = (
    "",
    "yesterday",
    "2025-13-01T00:00:00",
    "2025-01-20T25:00:00",
    "1969-12-31T23:59:59",
    "2201-01-01T00:00:00",
    "2025-01-20T10:15:30+99:00",
    "nan",
    1737368130,
    None,
    ["2025-01-20T10:15:30"],
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@dataclass(frozen=True)
class Plan:
    seed: int
    kinds: list[str]
    values: list[Any]  # random JSON for `replace_field` and `wrong_json_type`
    batch: int  # most messages per handle() call


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    return Plan(
        seed=draw(st.integers(0, 2**32 - 1)),
        kinds=draw(st.lists(st.sampled_from(KINDS), min_size=MESSAGES_PER_PLAN[0], max_size=MESSAGES_PER_PLAN[1])),
        values=draw(st.lists(JSON_VALUES, min_size=1, max_size=8)),
        batch=draw(st.integers(1, 100)),
    )


def leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside `doc`: keys of objects, indexes of arrays."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield (*path, key)
        yield from leaves(value, (*path, key))


def put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def delete(doc: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        doc = doc[key]
    del doc[path[-1]]


def number_paths(doc: Any) -> list[tuple[Any, ...]]:
    found = []
    for path in leaves(doc):
        value = doc
        for key in path:
            value = value[key]
        if type(value) in (int, float):
            found.append(path)
    return found


def mutate(kind: str, channel: str, base: bytes, earlier: list[Message], plan: Plan, rng: random.Random) -> Message:
    """One message of `kind`, made from the good message `base` (stdlib json: it writes NaN and big ints)."""
    doc = json.loads(base)
    if kind == "good":
        return channel, base
    if kind == "repeat":
        return rng.choice(earlier) if earlier else (channel, base)
    if kind == "random_bytes":
        return channel, rng.randbytes(rng.randrange(300))
    if kind == "not_utf8":
        at = rng.randrange(len(base))
        return channel, base[:at] + bytes([rng.randrange(0x80, 0x100)]) + base[at + 1 :]
    if kind == "truncated":
        return channel, base[: rng.randrange(len(base))]
    if kind == "wrong_json_type":
        value = rng.choice([*plan.values, list(doc.values()), 42, "text", None])
        return channel, json.dumps(value).encode()
    if kind == "oversize":
        padded = base + b" " * (MAX_BYTES + 1 - len(base)) if rng.random() < 0.5 else None
        return channel, padded or json.dumps({**doc, "pad": "x" * MAX_BYTES}).encode()
    if kind == "wrong_channel":
        return rng.choice([other for other in CHANNELS if other != channel]), base
    paths = list(leaves(doc))
    if kind == "delete_field":
        delete(doc, rng.choice(paths))
    elif kind == "replace_field":
        put(doc, rng.choice(paths), rng.choice(plan.values))
    elif kind in ("negative", "huge"):
        path = rng.choice(number_paths(doc))
        value = doc
        for key in path:
            value = value[key]
        put(doc, path, rng.choice(HUGE) if kind == "huge" else -value if value else -1)
    elif kind == "bad_timestamp":
        stamps = [path for path in paths if path[-1] == "timestamp"]
        put(doc, rng.choice(stamps), rng.choice(BAD_TIMESTAMPS))
    elif kind == "strike_mismatch":
        strike_mismatch(doc, rng)
    return channel, json.dumps(doc).encode()


def strike_mismatch(doc: dict[str, Any], rng: random.Random) -> None:
    if "tick_id" in doc:  # a tick has no strike: a counter sent as a float instead
        doc["tick_id"] = float(doc["tick_id"])
        return
    if "strikes" not in doc:  # a quote: its strike no longer matches its symbol
        doc["strike"] = doc["strike"] + rng.choice((-50.0, 0.5, 1000.0))
        return
    side = doc[rng.choice(("calls", "puts"))]
    choice = rng.randrange(4)
    if choice == 0:
        rng.choice(side)["strike"] = max(doc["strikes"]) + 1.0  # a row off the grid
    elif choice == 1:
        doc["strikes"].append(doc["strikes"][0])  # a strike twice
    elif choice == 2:
        doc["strikes"].pop(rng.randrange(len(doc["strikes"])))  # a row's strike missing
    else:
        side.append(dict(rng.choice(side)))  # a row twice


def build(plan: Plan, start: datetime) -> tuple[list[Message], set[Message]]:
    """The plan's messages, and the feed's own (unmutated) ones among them."""
    rng = random.Random(plan.seed)
    n = len(plan.kinds)
    chains = max(1, n // 10)
    ticks = (n - chains) * 2 // 5
    feed = SyntheticFeed(seed=plan.seed, start=start)
    bases = list(feed.burst(ticks, n - chains - ticks, chains, strikes=4))
    messages: list[Message] = []
    for kind, (channel, base) in zip(plan.kinds, bases, strict=True):
        messages.append(mutate(kind, channel, base, messages, plan, rng))
    last = feed.tick("NIFTY")  # the last message is good: the app must still take it
    return messages + last, {*bases, *last}


@dataclass(frozen=True)
class Accepted:
    collection: str
    identity: str
    channel: str
    data: bytes
    pristine: bool  # straight from the feed: it must be stored


@dataclass
class Expected:
    outcomes: list[str] = field(default_factory=list)
    rejected: Counter[tuple[str, str, bytes]] = field(default_factory=Counter)  # channel, reason, payload
    accepted: list[Accepted] = field(default_factory=list)  # first deliveries of valid messages


class Harness:
    """One app for all the examples of a test, and what they have stored so far."""

    def __init__(self, app: Enricher, redis: Redis, mongo: Mongo, db_name: str) -> None:
        self.app = app
        self.redis = redis
        self.mongo = mongo
        self.db_name = db_name
        self.seen: set[tuple[str, str]] = set()  # (kind, identity) delivered so far
        self.stored: Counter[str] = Counter()  # documents per collection so far
        self.starts = itertools.count()
        self.sent = 0

    def __repr__(self) -> str:  # short: Hypothesis prints it with a failing example
        return f"Harness(sent={self.sent}, stored={dict(self.stored)})"

    def next_start(self) -> datetime:
        # Each plan in its own hour: the feed's identities never repeat across plans.
        return datetime(2031, 1, 1, tzinfo=UTC) + timedelta(hours=next(self.starts))

    def expect(self, messages: list[Message], pristine: set[Message]) -> Expected:
        expected = Expected()
        settings = self.app.settings
        for channel, data in messages:
            try:
                record = parse(
                    channel, data, feed_tz=settings.tz, max_bytes=settings.max_message_bytes,
                    max_strikes=settings.max_strikes,
                )  # fmt: skip
            except InvalidMessage as exc:
                expected.outcomes.append(INVALID)
                expected.rejected[channel, exc.reason, data] += 1
                continue
            key = (KIND[channel], record.identity)
            if key in self.seen:
                expected.outcomes.append(DUPLICATE)
            else:
                self.seen.add(key)
                expected.outcomes.append(PROCESSED)
                accepted = Accepted(COLLECTION[channel], record.identity, channel, data, (channel, data) in pristine)
                expected.accepted.append(accepted)
        return expected

    async def outputs(self, expected: Expected) -> tuple[set[tuple[str, str]], list[dict[str, Any]]]:
        """(collection, _id) of the accepted messages found in MongoDB, and every dead letter."""
        db = self.mongo[self.db_name]
        ids: defaultdict[str, list[str]] = defaultdict(list)
        for accepted in expected.accepted:
            ids[accepted.collection].append(accepted.identity)
        stored = set()
        for collection, wanted in ids.items():
            async for doc in db[collection].find({"_id": {"$in": wanted}}, {"_id": 1}):
                stored.add((collection, doc["_id"]))
        return stored, [json.loads(raw) for raw in await self.redis.lrange(DLQ_KEY, 0, -1)]

    async def check_outputs(self, expected: Expected) -> None:
        """Rejects dead-lettered byte-exact with parse's reason; each accepted message stored
        exactly once, or (a hostile one only) refused by MongoDB and dead-lettered instead."""

        async def settled() -> bool:
            stored, records = await self.outputs(expected)
            refused = sum(1 for record in records if record["error_type"] not in REASONS)
            return len(stored) + refused >= len(expected.accepted) and len(records) >= expected.rejected.total()

        try:
            await wait_for(settled, timeout=30, what="every message stored or dead-lettered")
        except AssertionError as exc:
            stored, _ = await self.outputs(expected)
            lost = [a for a in expected.accepted if (a.collection, a.identity) not in stored]
            good = sum(a.pristine for a in lost)
            suspects = [(a.channel, a.data[:400]) for a in lost if not a.pristine][:3]
            buffered = self.app.store.held if self.app.store else None
            raise AssertionError(
                f"{exc}: {len(lost)} accepted but neither stored nor dead-lettered ({good} straight from the "
                f"feed); MongoDB write buffer {buffered}; mutated ones among them: {suspects}"
            ) from None
        stored, records = await self.outputs(expected)

        bad_input = Counter(
            (r["channel"], r["error_type"], payload_bytes(r)) for r in records if r["error_type"] in REASONS
        )
        missing, extra = expected.rejected - bad_input, bad_input - expected.rejected
        assert not missing, f"not dead-lettered as parse says: {shown(missing)}"
        assert not extra, f"dead-lettered unexpectedly: {shown(extra)}"
        assert all(r["attempts"] == 1 for r in records)
        refused = Counter((r["channel"], payload_bytes(r)) for r in records if r["error_type"] not in REASONS)
        assert {r["error_type"] for r in records if r["error_type"] not in REASONS} <= {"mongo_write_error"}
        for accepted in expected.accepted:
            in_mongo = (accepted.collection, accepted.identity) in stored
            in_dlq = refused[accepted.channel, accepted.data] > 0
            assert in_mongo != in_dlq, f"stored {in_mongo}, dead-lettered {in_dlq}: {accepted}"
            assert in_mongo or not accepted.pristine, f"a good message not stored: {accepted}"
            refused[accepted.channel, accepted.data] -= in_dlq
        assert not +refused, f"dead-lettered by the store, never accepted: {list(+refused)[:3]}"

        self.stored.update(collection for collection, _ in stored)
        db = self.mongo[self.db_name]
        for collection, total in self.stored.items():
            assert await db[collection].count_documents({}) == total, f"extra documents in {collection}"


def shown(counts: Counter[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
    return [(channel, reason, data[:120]) for channel, reason, data in list(counts)[:5]]


@pytest.fixture
async def harness(start_app: StartApp, redis: Redis, mongo: Mongo, db_name: str) -> Harness:
    app = await start_app(max_message_bytes=MAX_BYTES, pool_workers=0)
    return Harness(app, redis, mongo, db_name)


def in_batches(messages: list[Message], size: int) -> Iterator[tuple[str, list[Message]]]:
    """Runs of one channel, at most `size` long: what a worker takes from its queue."""
    for channel, run in itertools.groupby(messages, key=lambda message: message[0]):
        group = list(run)
        for start in range(0, len(group), size):
            yield channel, group[start : start + size]


FUZZ = settings(
    max_examples=HANDLE_EXAMPLES,
    deadline=None,
    # No shrinking: each example costs a second on real servers, and the app they share has
    # moved on. The failure message names the offending messages instead.
    phases=(Phase.explicit, Phase.generate),
    # No example database either: saving an example of an async test (as pytest-asyncio wraps
    # it) fails in hypothesis' background writer, and surfaces later as an unraisable error in
    # some other test. Nothing is replayed or shrunk here, so nothing is lost.
    database=None,
    report_multiple_bugs=False,
    # One app serves every example, on purpose: state carried over must not break it either.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(plan=plans())
async def test_fuzz_through_pipeline_handle(harness: Harness, plan: Plan) -> None:
    await harness.redis.delete(DLQ_KEY)
    messages, pristine = build(plan, harness.next_start())
    expected = harness.expect(messages, pristine)
    outcomes: list[str] = []
    for channel, batch in in_batches(messages, plan.batch):
        now = time.time()
        outcomes += await harness.app.pipeline.handle(channel, [RawMessage(channel, data, now) for _, data in batch])
    harness.sent += len(messages)
    mismatched = [
        (got, want, channel, data[:120])
        for got, want, (channel, data) in zip(outcomes, expected.outcomes, messages, strict=True)
        if got != want
    ]
    assert not mismatched, f"{len(mismatched)} outcomes differ from parse's verdict, e.g. {mismatched[:5]}"
    await harness.check_outputs(expected)


@settings(FUZZ, max_examples=REDIS_EXAMPLES)
@given(plan=plans())
async def test_fuzz_through_redis(harness: Harness, plan: Plan) -> None:
    await harness.redis.delete(DLQ_KEY)
    messages, pristine = build(plan, harness.next_start())
    expected = harness.expect(messages, pristine)
    metrics = harness.app.metrics
    before = Counter({outcome: metrics.total(outcome) for outcome in (PROCESSED, DUPLICATE, INVALID, FAILED)})
    received_before = metrics.total(RECEIVED)
    async with harness.redis.pipeline(transaction=False) as pipe:
        for channel, data in messages:
            pipe.publish(channel, data)
        receivers = await pipe.execute()
    harness.sent += len(messages)
    unheard = sum(1 for n in receivers if n < 1)
    assert not unheard, f"{unheard} of {len(messages)} published while the app was not subscribed"

    def done() -> Counter[str]:
        return Counter({outcome: metrics.total(outcome) - before[outcome] for outcome in before})

    try:
        await wait_for(lambda: done().total() >= len(messages), timeout=30, what="every message handled")
    except AssertionError as exc:
        received = metrics.total(RECEIVED) - received_before
        raise AssertionError(
            f"{exc}: received {received} of {len(messages)}, outcomes {dict(+done())}, "
            f"expected {dict(Counter(expected.outcomes))}"
        ) from None
    assert +done() == Counter(expected.outcomes)
    await harness.check_outputs(expected)


def test_plans_mix_good_and_bad() -> None:
    """The generator itself: good messages fit the size limit, and bad ones cover many reasons."""
    feed = SyntheticFeed(seed=3, start=datetime(2031, 1, 1, tzinfo=UTC))
    assert all(len(data) <= MAX_BYTES for _, data in feed.burst(40, 40, 40, strikes=4))
    plan = Plan(seed=7, kinds=list(KINDS) * 13, values=[{"a": [1.5, None]}, "x", -3], batch=10)
    messages, _ = build(plan, datetime(2031, 1, 1, tzinfo=UTC))
    verdicts: Counter[str] = Counter()
    for channel, data in messages:
        try:
            parse(channel, data, feed_tz=UTC, max_bytes=MAX_BYTES)
        except InvalidMessage as exc:
            verdicts[exc.reason] += 1
        else:
            verdicts["accepted"] += 1
    assert verdicts["accepted"] > len(messages) // 5
    assert len(verdicts) >= 10, verdicts
