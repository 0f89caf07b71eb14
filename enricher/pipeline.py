"""One batch of one channel's messages: parse → dedupe → analyse → cache and publish → persist.

Everything here works on whole batches: one idempotency round trip, one pool call, one Redis
pipeline and one hand-over to the MongoDB writer per batch, never one per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from enricher import cache as keys
from enricher.analytics.candles import CandleBook
from enricher.analytics.surface import SurfaceBook
from enricher.backoff import Backoff
from enricher.cache import Cache, Outputs
from enricher.deadletter import DeadLetters
from enricher.errors import is_transient
from enricher.gaps import GapDetector
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
    Quote,
    Record,
    Tick,
    utc_iso,
)
from enricher.redact import redact_text
from enricher.settings import Settings
from enricher.source import RawMessage
from enricher.store import CHAINS, QUOTES, TICKS, MongoStore, Pending

log = structlog.get_logger("enricher.pipeline")

KIND = {UNDERLYING: "tick", OPTION_QUOTE: "quote", OPTION_CHAIN: "chain"}
COLLECTION = {UNDERLYING: TICKS, OPTION_QUOTE: QUOTES, OPTION_CHAIN: CHAINS}
CANDLE_WINDOWS = (1, 5, 15)

Item = tuple[Record, RawMessage, str]  # record, its raw message, its idempotency key
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
        self.candles = CandleBook(CANDLE_WINDOWS)
        self.surfaces = SurfaceBook(max_strikes=settings.max_strikes)
        self._turns = {channel: TurnTaker() for channel in CHANNELS}
        self.gaps = GapDetector(metrics, settings.gap_tick_counter, settings.gap_max_silence)

    async def handle(self, channel: str, batch: Sequence[RawMessage]) -> list[str]:
        """Process one batch; return each message's outcome, in order.

        The outcome is `processed`, `duplicate`, `invalid` or `failed` (the last two were
        dead-lettered). `processed` means cached, published and handed to the MongoDB writer.
        """
        outcomes: Outcomes = {}
        turns = self._turns[channel]
        ticket = turns.ticket()  # before any await: tickets follow the queue's order
        try:
            items, analysed = await self._prepare(channel, batch, outcomes)
            await turns.turn(ticket)
            applied = self._apply_safely(channel, items, analysed)
        finally:
            turns.done(ticket)
        if isinstance(applied, Exception):
            await self._give_up(channel, items, applied, 1, outcomes)
        elif items:
            started = time.perf_counter()
            outputs, pending = applied
            if await self._write_with_retry(channel, items, outputs, outcomes):
                if self._store is not None:
                    self._store.add(COLLECTION[channel], pending)
                else:
                    await self._idem.mark_done([key for _, _, key in items])
                self._account(channel, items, time.perf_counter() - started, outcomes)
        return [outcomes.get(id(raw), FAILED) for raw in batch]

    async def _prepare(
        self, channel: str, batch: Sequence[RawMessage], outcomes: Outcomes
    ) -> tuple[list[Item], list[Any]]:
        """Parse, claim and analyse: everything that may overlap with other batches."""
        parsed = self._parse(channel, batch, outcomes)
        try:
            items = await self._claim(channel, parsed, outcomes)
        except Exception as exc:  # Redis stayed down through every retry
            unclaimed = [(record, raw, "") for record, raw in parsed]
            await self._give_up(channel, unclaimed, exc, self._settings.retry_attempts, outcomes)
            return [], []
        try:
            return items, await self._analyse(channel, items)
        except Exception as exc:  # the pool failed twice, or a chain the kernels reject
            await self._give_up(channel, items, exc, 1, outcomes)
            return [], []

    def _apply_safely(
        self, channel: str, items: list[Item], analysed: list[Any]
    ) -> tuple[Outputs, list[Pending]] | Exception:
        if not items:
            return Outputs(), []
        try:
            return self._apply(channel, items, analysed)
        except Exception as exc:  # a bug, or a value the parser let through: never retried
            log.exception("enrich_failed", channel=channel, batch=len(items))
            return exc

    def _parse(self, channel: str, batch: Sequence[RawMessage], outcomes: Outcomes) -> list[tuple[Record, RawMessage]]:
        parsed = []
        settings = self._settings
        for raw in batch:
            try:
                record = parse(
                    channel,
                    raw.data,
                    feed_tz=self._tz,
                    max_bytes=settings.max_message_bytes,
                    max_strikes=settings.max_strikes,
                )
            except InvalidMessage as exc:
                self._metrics.count(channel, INVALID)
                outcomes[id(raw)] = INVALID
                log.warning("invalid_message", channel=channel, reason=exc.reason, detail=exc.detail[:200])
                self._dead.reject(channel, raw.data, exc.reason, exc.detail)
                continue
            parsed.append((record, raw))
        return parsed

    async def _claim(self, channel: str, parsed: list[tuple[Record, RawMessage]], outcomes: Outcomes) -> list[Item]:
        kind = KIND[channel]
        unique: dict[str, tuple[Record, RawMessage]] = {}
        for record, raw in parsed:
            key = mark_key(kind, record.identity)
            if key in unique:
                self._duplicate(channel, record, raw, outcomes)  # the same message twice in one batch
            else:
                unique[key] = (record, raw)
        if not unique:
            return []
        claims = await self._retry(channel, lambda: self._idem.claim(list(unique)))
        items = []
        for (key, (record, raw)), claim in zip(unique.items(), claims, strict=True):
            if claim is Claim.NEW:
                items.append((record, raw, key))
            else:
                # BUSY: another delivery holds it now and will finish it (or its mark expires).
                self._duplicate(channel, record, raw, outcomes)
        return items

    async def _analyse(self, channel: str, items: list[Item]) -> list[Any]:
        """The stateless, CPU-heavy part, which may overlap with other batches (the pool)."""
        if channel != OPTION_CHAIN or not items:
            return []
        return await self._pool.chain_metrics([record for record, _, _ in items])  # type: ignore[misc]

    def _apply(self, channel: str, items: list[Item], analysed: list[Any]) -> tuple[Outputs, list[Pending]]:
        """The stateful part, run in the batches' queue order (see ordering.py)."""
        now = datetime.now(UTC)
        if channel == UNDERLYING:
            return self._ticks(items, now)
        if channel == OPTION_QUOTE:
            return self._quotes(items, now)
        return self._chains(items, analysed, now)

    def _ticks(self, items: list[Item], now: datetime) -> tuple[Outputs, list[Pending]]:
        out, pending, ttl = Outputs(), [], self._settings.cache_ttl
        now_iso = now.isoformat()
        touched: set[str] = set()
        for record, raw, key in items:
            tick: Tick = record  # type: ignore[assignment]
            received = tick.doc["timestamp"]
            self.gaps.observe(tick.product, tick.tick_id, tick.timestamp)
            self.candles.add(tick.product, tick.price, tick.timestamp)
            touched.add(tick.product)
            stamp = utc_iso(tick.timestamp)
            value = orjson.dumps({"price": tick.price, "timestamp": received})
            out.set(keys.underlying_key(tick.product), value, ttl, stamp)
            out.publish(
                keys.ENRICHED_UNDERLYING,
                orjson.dumps(
                    {
                        "type": "UNDERLYING_ENRICHED",
                        "product": tick.product,
                        "price": tick.price,
                        "timestamp": received,
                        "processed_at": now_iso,
                    }
                ),
            )
            doc = {**tick.doc, "_id": tick.identity, "timestamp": tick.timestamp, "processed_at": now}
            pending.append(Pending(doc, key, UNDERLYING, raw.data))
        for product in touched:
            for window in CANDLE_WINDOWS:
                candle = self.candles.current(product, window)
                if candle is not None:
                    # Within a candle a later state has more ticks; a new candle starts later.
                    version = f"{utc_iso(candle.start_time)}|{candle.num_ticks:012d}"
                    out.set(keys.ohlc_key(product, window), orjson.dumps(candle.to_json()), window * 60, version)
        return out, pending

    def _quotes(self, items: list[Item], now: datetime) -> tuple[Outputs, list[Pending]]:
        out, pending, ttl = Outputs(), [], self._settings.cache_ttl
        touched: set[str] = set()
        for record, raw, key in items:
            quote: Quote = record  # type: ignore[assignment]
            out.set(keys.option_key(quote.symbol), orjson.dumps(quote.doc), ttl, utc_iso(quote.timestamp))
            self.surfaces.apply_quote(quote, quote.doc["timestamp"])
            touched.add(quote.product)
            doc = {**quote.doc, "_id": quote.identity, "timestamp": quote.timestamp, "processed_at": now}
            pending.append(Pending(doc, key, OPTION_QUOTE, raw.data))
        self._surface_outputs(out, touched)
        return out, pending

    def _chains(self, items: list[Item], results: list[Any], now: datetime) -> tuple[Outputs, list[Pending]]:
        out, pending, ttl = Outputs(), [], self._settings.cache_ttl
        touched: set[str] = set()
        for (record, raw, key), metrics in zip(items, results, strict=True):
            chain: Chain = record  # type: ignore[assignment]
            received = chain.doc["timestamp"]
            enriched: dict[str, Any] = {
                **chain.doc,
                "pcr_oi": metrics.pcr_oi,
                "pcr_volume": metrics.pcr_volume,
                "atm_strike": metrics.atm_strike,
                "atm_straddle_price": metrics.atm_straddle_price,
                "max_pain_strike": metrics.max_pain_strike,
                "total_call_oi": metrics.total_call_oi,
                "total_put_oi": metrics.total_put_oi,
                "call_buildup_otm": metrics.call_buildup_otm,
                "put_buildup_otm": metrics.put_buildup_otm,
                "processed_at": now,  # orjson writes ISO-8601; MongoDB gets a datetime
            }
            data = orjson.dumps(enriched)
            stamp = utc_iso(chain.timestamp)
            out.set(keys.chain_key(chain.product, chain.expiry), data, ttl, stamp)
            pcr = {"pcr_oi": metrics.pcr_oi, "pcr_volume": metrics.pcr_volume, "timestamp": received}
            out.set(keys.pcr_key(chain.product, chain.expiry), orjson.dumps(pcr), ttl, stamp)
            out.publish(keys.ENRICHED_CHAIN, data)
            self.surfaces.apply_chain(chain, received)
            touched.add(chain.product)
            doc = {**enriched, "_id": chain.identity, "timestamp": chain.timestamp}
            pending.append(Pending(doc, key, OPTION_CHAIN, raw.data))
        self._surface_outputs(out, touched)
        return out, pending

    def _surface_outputs(self, out: Outputs, products: set[str]) -> None:
        for product in products:
            snapshot = self.surfaces.snapshot(product)
            if snapshot is None:
                continue
            stamp = self.surfaces.stamp(product)
            out.set(keys.surface_key(product), orjson.dumps(snapshot), self._settings.cache_ttl, stamp)
            points = self.surfaces.points(snapshot, self._settings.iv_surface_max)
            out.replace_sorted_set(keys.iv_surface_key(product), points, stamp)

    async def _write_with_retry(self, channel: str, items: list[Item], outputs: Outputs, outcomes: Outcomes) -> bool:
        try:
            await self._retry(channel, lambda: self._cache.write(outputs))
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
            self._dead.reject(channel, raw.data, type(exc).__name__, error, attempts)
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
        window = metrics.latency[channel]
        for _, raw, _ in items:
            outcomes[id(raw)] = PROCESSED
            window.add(now - raw.received_at)
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
