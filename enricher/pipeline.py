"""One batch of one channel's messages: parse → dedupe → analyse → cache and publish → persist.

Everything here works on whole batches: one idempotency round trip (none for quotes without
persistence, claimed in their cache write), one pool call, one Redis script call and one
hand-over to the MongoDB writer per batch, never one per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog

from enricher.analytics.jobs import ChainResults
from enricher.backoff import Backoff
from enricher.cache import Cache, Outputs
from enricher.deadletter import DeadLetters
from enricher.errors import is_transient
from enricher.histograms import END_TO_END, PROCESSING
from enricher.idempotency import Claim, Idempotency, mark_key
from enricher.logs import debug_enabled
from enricher.messages import parse
from enricher.metrics import DUPLICATE, FAILED, INVALID, PROCESSED, Metrics
from enricher.ordering import TurnTaker
from enricher.pool import AnalyticsPool
from enricher.records import (
    CHANNELS,
    OPTION_CHAIN,
    OPTION_QUOTE,
    UNDERLYING,
    Chain,
    InvalidMessage,
    Record,
)
from enricher.redact import redact_text
from enricher.settings import Settings
from enricher.source import RawMessage, defer, settle
from enricher.state import Applied, Item, MarketState
from enricher.store import CHAINS, QUOTES, TICKS, MongoStore
from enricher.takeover import adopt, recall

log = structlog.get_logger("enricher.pipeline")

KIND = {UNDERLYING: "tick", OPTION_QUOTE: "quote", OPTION_CHAIN: "chain"}
COLLECTION = {UNDERLYING: TICKS, OPTION_QUOTE: QUOTES, OPTION_CHAIN: CHAINS}

Outcomes = dict[int, str]  # id(raw message) -> its outcome


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        cache: Cache,
        idempotency: Idempotency,
        store: MongoStore | None,
        dead_letters: DeadLetters,
        pool: AnalyticsPool,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._tz = settings.tz
        self._cache = cache
        self._idem = idempotency
        self._store = store
        self._dead = dead_letters
        self._pool = pool
        self._metrics = metrics
        self.state = MarketState(settings, metrics)
        self.surfaces_changed = asyncio.Event()  # set when a batch leaves a product's surface dirty
        self._turns = {channel: TurnTaker() for channel in CHANNELS}
        self._recalled: dict[str, asyncio.Task[None]] = {}  # product -> its state, loaded once

    async def handle(self, channel: str, batch: Sequence[RawMessage]) -> list[str]:
        """Process one batch; return each message's outcome, in order.

        The outcome is `processed`, `duplicate`, `invalid` or `failed` (the last two were
        dead-lettered). `processed` means cached, published and handed to the MongoDB writer.
        """
        outcomes: Outcomes = {}
        turns = self._turns[channel]
        ticket = turns.ticket()  # before any await: tickets follow the queue's order
        # Quotes without persistence claim in their cache write: see _write_claiming.
        claim_in_write = channel == OPTION_QUOTE and self._store is None
        try:
            items = await self._prepare(channel, batch, outcomes, claim=not claim_in_write)
            await turns.turn(ticket)
            if self._settings.restore_state:
                await self._recall({record.product for record, _, _ in items})
            applied = await self._enrich(channel, items)
        finally:
            turns.done(ticket)
        if self.state.dirty:
            self.surfaces_changed.set()
        if isinstance(applied, Exception):
            await self._give_up(channel, _unclaimed(items) if claim_in_write else items, applied, 1, outcomes)
        elif items and claim_in_write:
            await self._write_claiming(channel, items, applied.outputs, outcomes)
        elif items:
            started = time.perf_counter()
            # With persistence off, the cache is the durable result: its write marks them done.
            done = [key for _, _, key in items] if self._store is None else []
            write = partial(self._cache.write, applied.outputs, done, self._idem.done_ttl)
            if await self._write_with_retry(channel, items, write, outcomes):
                if self._store is not None:
                    self._store.add(COLLECTION[channel], applied.documents)
                    for collection, extra in applied.extras:
                        self._store.add(collection, [extra])
                else:
                    for _, raw, _ in items:
                        settle(raw)
                self._account(channel, items, time.perf_counter() - started, outcomes)
        return [outcomes.get(id(raw), FAILED) for raw in batch]

    async def _prepare(
        self, channel: str, batch: Sequence[RawMessage], outcomes: Outcomes, *, claim: bool
    ) -> list[Item]:
        """Parse and claim (or, with `claim` false, only drop a batch's second copies): the
        part that may overlap with other batches."""
        items = self._unique(channel, self._parse(channel, batch, outcomes), outcomes)
        if not claim:
            return items
        try:
            return await self._claim(channel, items, outcomes)
        except Exception as exc:  # Redis stayed down through every retry
            await self._give_up(channel, _unclaimed(items), exc, self._settings.retry_attempts, outcomes)
            return []

    async def write_surfaces(self) -> None:
        """Write the surface keys of every product whose surface changed since the last call.

        They follow the batches that changed them (app.py runs this after the live tiers):
        an 8-chain feed second's chain batch took 10.3 ms instead of 16.1 (in-process
        medians), and a product's surface is rendered once for a run of batches, not once per
        batch. If Redis stays down through every retry, the products stay dirty for the next
        call; the surface keys are derived, so nothing is dead-lettered.
        """
        products, applied = self.state.surface_outputs()
        if not products:
            return
        try:
            await self._retry("surfaces", lambda: self._cache.write(applied.outputs))
        except Exception as exc:
            self.state.dirty |= products
            log.error("surface_write_failed", products=sorted(products), error=redact_text(str(exc))[:300])
            return
        if self._store is not None:
            for collection, extra in applied.extras:
                self._store.add(collection, [extra])

    async def _recall(self, products: set[str]) -> None:
        """Before a product's first batch here, load its state from Redis (takeover.py): the
        products new to a batch together, in one task and two round trips."""
        new = sorted(products - self._recalled.keys())
        if new:
            task = asyncio.create_task(self._recall_some(new), name=f"recall:{','.join(new)}")
            for product in new:
                self._recalled[product] = task
        waits = {self._recalled[product] for product in products if not self._recalled[product].done()}
        if waits:
            await asyncio.wait(waits)

    async def _recall_some(self, products: list[str]) -> None:
        try:
            memories = await recall(self._cache.redis, products)
        except Exception as exc:  # Redis away: start these products from nothing, as before
            log.warning("restore_failed", products=products, error=redact_text(str(exc))[:200])
            return
        for product, memory in memories.items():
            restored = adopt(self.state, product, memory, self._tz)
            if restored:
                self._metrics.event("state_restored", restored)
                log.info("state_restored", product=product, pieces=restored, chains=len(memory.chains))

    async def _enrich(self, channel: str, items: list[Item]) -> Applied | Exception:
        """Analyse and update the state, in queue order: a chain's OI change needs the one before."""
        if not items:
            return Applied()
        try:
            now = datetime.now(UTC)
            if channel == UNDERLYING:
                return self.state.ticks(items, now)
            if channel == OPTION_QUOTE:
                return self.state.quotes(items, now)
            return self.state.chains(items, await self._analyse_chains(items), now)
        except Exception as exc:  # a bug, a value the parser let through, or the pool failing twice
            log.exception("enrich_failed", channel=channel, batch=len(items))
            return exc

    async def _analyse_chains(self, items: list[Item]) -> ChainResults:
        chains: list[Chain] = [record for record, _, _ in items]  # type: ignore[misc]
        return await self._pool.analyse_chains(chains, self.state.previous(chains), self.state.model)

    def _parse(self, channel: str, batch: Sequence[RawMessage], outcomes: Outcomes) -> list[tuple[Record, RawMessage]]:
        parsed = []
        tz, max_bytes, max_strikes = self._tz, self._settings.max_message_bytes, self._settings.max_strikes
        for raw in batch:
            try:
                record = parse(channel, raw.data, feed_tz=tz, max_bytes=max_bytes, max_strikes=max_strikes)
            except InvalidMessage as exc:
                self._metrics.count(channel, INVALID)
                outcomes[id(raw)] = INVALID
                log.warning("invalid_message", channel=channel, reason=exc.reason, detail=exc.detail[:200])
                self._dead.reject(channel, raw.data, exc.reason, exc.detail, receipt=raw.receipt)
                continue
            parsed.append((record, raw))
        return parsed

    def _unique(self, channel: str, parsed: list[tuple[Record, RawMessage]], outcomes: Outcomes) -> list[Item]:
        """Each message with its idempotency key; a second copy in the batch is a duplicate."""
        kind = KIND[channel]
        unique: dict[str, Item] = {}
        for record, raw in parsed:
            key = mark_key(kind, record.identity)
            if key in unique:
                self._duplicate(channel, record, raw, outcomes)  # the same message twice in one batch
                settle(raw)  # its twin carries the same payload to a result or a dead letter
            else:
                unique[key] = (record, raw, key)
        return list(unique.values())

    async def _claim(self, channel: str, items: list[Item], outcomes: Outcomes) -> list[Item]:
        if not items:
            return []
        claims = await self._retry(channel, lambda: self._idem.claim([key for _, _, key in items]))
        return self._claimed(channel, items, claims, outcomes)

    def _claimed(self, channel: str, items: list[Item], claims: list[Claim], outcomes: Outcomes) -> list[Item]:
        """The items this delivery owns; the others are counted duplicates and let go of."""
        owned = []
        for (record, raw, key), claim in zip(items, claims, strict=True):
            if claim is Claim.NEW:
                owned.append((record, raw, key))
                continue
            self._duplicate(channel, record, raw, outcomes)
            if claim is Claim.DONE:
                settle(raw)
            else:
                # BUSY: another delivery holds it now and will finish it, or its mark expires
                # and a stream redelivers this one; it must not be acknowledged meanwhile.
                defer(raw)
        return owned

    async def _write_claiming(self, channel: str, items: list[Item], outputs: Outputs, outcomes: Outcomes) -> None:
        """Quotes without persistence: write the batch's cache keys and claim its messages as
        done, in one script call instead of a claim before and a write after.

        This is safe for quotes because a quote's cache stamp is its identity's event time: the
        write refuses a value whose stamp its key already holds, which only a message of the
        same identity can have written, so a duplicate changes nothing there (a redelivery's
        surface point is the one already there too). Only the accounting needs the claims, and
        they come back with the write. The claims follow the writes in the script, so a call
        that fails part-way marks nothing done that was not written, and a failed call leaves
        no claim of ours to release. A retry after a lost reply finds its own claims: the
        batch is then counted as duplicates, and its writes stand.
        """
        started = time.perf_counter()
        keys = [key for _, _, key in items]
        claims: list[Claim] = []

        async def write() -> None:
            claims[:] = await self._cache.write_claiming(outputs, keys, self._idem.done_ttl)

        if not await self._write_with_retry(channel, _unclaimed(items), write, outcomes):
            return
        owned = self._claimed(channel, items, claims, outcomes)
        for _, raw, _ in owned:
            settle(raw)
        if owned:
            self._account(channel, owned, time.perf_counter() - started, outcomes)

    async def _write_with_retry(
        self, channel: str, items: list[Item], write: Callable[[], Awaitable[None]], outcomes: Outcomes
    ) -> bool:
        """Run `write` with retries; if it still fails, give `items` up (dead letters) and say so."""
        try:
            await self._retry(channel, write)
        except Exception as exc:
            attempts = self._settings.retry_attempts if is_transient(exc) else 1
            await self._give_up(channel, items, exc, attempts, outcomes)
            return False
        return True

    async def _retry(self, channel: str, operation: Any) -> Any:
        """Transient errors are retried with backoff up to `retry_attempts`; others raise at once."""
        backoff = Backoff(self._settings.retry_base, self._settings.retry_cap)
        for attempt in range(1, self._settings.retry_attempts + 1):
            try:
                return await operation()
            except Exception as exc:
                if not is_transient(exc) or attempt == self._settings.retry_attempts:
                    raise
                self._metrics.event("retries")
                delay = backoff.next_delay()
                log.warning("retrying", channel=channel, attempt=attempt, error=redact_text(str(exc))[:200])
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _give_up(
        self, channel: str, items: list[Item], exc: Exception, attempts: int, outcomes: Outcomes
    ) -> None:
        self._metrics.count(channel, FAILED, len(items))
        error = redact_text(str(exc))[:1000]
        log.error("gave_up", channel=channel, count=len(items), error_type=type(exc).__name__, error=error[:300])
        for _, raw, _ in items:
            outcomes[id(raw)] = FAILED
            self._dead.reject(channel, raw.data, type(exc).__name__, error, attempts, receipt=raw.receipt)
        try:
            await self._idem.release([key for _, _, key in items if key])
        except Exception as release_error:  # the marks expire after inflight_ttl anyway
            log.warning("release_failed", error=redact_text(str(release_error)))

    def _duplicate(self, channel: str, record: Record, raw: RawMessage, outcomes: Outcomes) -> None:
        self._metrics.count(channel, DUPLICATE)
        outcomes[id(raw)] = DUPLICATE
        if debug_enabled(log):
            log.debug("message", channel=channel, id=record.identity, outcome=DUPLICATE)

    def _account(self, channel: str, items: list[Item], seconds: float, outcomes: Outcomes) -> None:
        metrics = self._metrics
        metrics.count(channel, PROCESSED, len(items))
        now = time.time()
        for _, raw, _ in items:
            outcomes[id(raw)] = PROCESSED
        histograms = metrics.histograms
        histograms.observe_many(PROCESSING, channel, [now - raw.received_at for _, raw, _ in items])
        histograms.observe_many(END_TO_END, channel, [now - record.timestamp.timestamp() for record, _, _ in items])
        if debug_enabled(log):
            for record, raw, _ in items:
                log.debug(
                    "message",
                    channel=channel,
                    id=record.identity,
                    outcome=PROCESSED,
                    batch=len(items),
                    batch_ms=round(seconds * 1000, 3),
                    latency_ms=round((now - raw.received_at) * 1000, 3),
                )


def _unclaimed(items: list[Item]) -> list[Item]:
    """Items whose keys are not ours to release: nothing was claimed for them."""
    return [(record, raw, "") for record, raw, _ in items]
