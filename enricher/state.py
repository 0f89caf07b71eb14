"""The market as enricher remembers it, and the outputs each batch makes of it.

Per product: candles, the volatility surface, the last spot; per (product, expiry): the last
chain snapshot (for OI change) and the last model forward (for quotes). The pipeline calls
these builders in queue order (ordering.py), so the state only moves forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from enricher import cache as keys
from enricher.analytics.candles import Candle, CandleBook
from enricher.analytics.expiry import ChainSnapshot
from enricher.analytics.jobs import ChainResults
from enricher.analytics.model import ModelConfig, model_quotes, quote_ivs
from enricher.analytics.surface import SurfaceBook
from enricher.cache import Outputs
from enricher.gaps import GapDetector
from enricher.metrics import Metrics
from enricher.quotes import is_gdf
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING, Chain, Quote, Record, Tick
from enricher.settings import Settings
from enricher.source import RawMessage
from enricher.store import CANDLES, SURFACES, Pending

CANDLE_WINDOWS: Final = (1, 5, 15)
Item = tuple[Record, RawMessage, str]  # record, its raw message, its idempotency key
Expiry = tuple[str, str]  # (product, expiry)


@dataclass
class Applied:
    """What one batch changes outside the process."""

    outputs: Outputs = field(default_factory=Outputs)
    documents: list[Pending] = field(default_factory=list)  # the messages, for their collection
    extras: list[tuple[str, Pending]] = field(default_factory=list)  # candles, surface snapshots


def model_config(settings: Settings) -> ModelConfig:
    defaults = ModelConfig()
    return ModelConfig(
        r=settings.risk_free_rate,
        closes={**defaults.closes, **settings.parsed_closes()},
        lot_sizes={**defaults.lot_sizes, **settings.parsed_lot_sizes()},
        gex_sign=settings.gex_sign,
    )


class MarketState:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.persist = settings.persist  # False: the documents for MongoDB are not even built
        self.model = model_config(settings)
        self.candles = CandleBook(CANDLE_WINDOWS)
        self.surfaces = SurfaceBook(max_strikes=settings.max_strikes)
        # Partitioned streams hand each instance a slice of the feed's shared tick counter, in
        # partition order: only the per-product silence check means anything there.
        shared_counter = settings.gap_tick_counter and settings.source == "pubsub"
        self.gaps = GapDetector(metrics, shared_counter, settings.gap_max_silence)
        self.snapshots: dict[Expiry, ChainSnapshot] = {}
        self.forwards: dict[Expiry, float] = {}
        self.spots: dict[str, float] = {}
        # Products whose surface changed since `surface_outputs` last rendered it. The surface
        # keys are written after the batches that change them, not with them (app.py).
        self.dirty: set[str] = set()
        self._surface_saved: dict[str, float] = {}

    def previous(self, chains: list[Chain]) -> list[ChainSnapshot | None]:
        return [self.snapshots.get((chain.product, chain.expiry)) for chain in chains]

    def ticks(self, items: list[Item], now: datetime) -> Applied:
        applied, ttl, now_iso = Applied(), self._settings.cache_ttl, now.isoformat()
        out = applied.outputs
        touched: set[str] = set()
        for record, raw, key in items:
            tick: Tick = record  # type: ignore[assignment]
            received = tick.doc["timestamp"]
            self.gaps.observe(tick.product, tick.tick_id, tick.timestamp)
            outcome = self.candles.add(tick.product, tick.price, tick.timestamp)
            for closed in outcome.closed:
                applied.extras.append((CANDLES, _candle_document(closed)))
            if outcome.too_late:
                self._metrics.event("candle_late_ticks", len(outcome.too_late))
            self.spots[tick.product] = tick.price
            touched.add(tick.product)
            value = orjson.dumps({"price": tick.price, "timestamp": received})
            out.set(keys.underlying_key(tick.product), value, ttl, tick.stamp)
            event = {
                "type": "UNDERLYING_ENRICHED",
                "product": tick.product,
                "price": tick.price,
                "timestamp": received,
                "processed_at": now_iso,
            }
            out.publish(keys.ENRICHED_UNDERLYING, orjson.dumps(event))
            if self.persist:
                doc = {**tick.doc, "_id": tick.identity, "timestamp": tick.timestamp, "processed_at": now}
                applied.documents.append(Pending(doc, key, UNDERLYING, raw.data, raw.receipt))
        for product in touched:
            for window in CANDLE_WINDOWS:
                candle = self.candles.current(product, window)
                if candle is not None:
                    # Within a candle a later state has more ticks; a new candle starts later.
                    version = f"{candle.start_stamp}|{candle.num_ticks:012d}"
                    out.set(keys.ohlc_key(product, window), orjson.dumps(candle.to_json()), window * 60, version)
        return applied

    def quotes(self, items: list[Item], now: datetime) -> Applied:
        applied, ttl = Applied(), self._settings.cache_ttl
        quotes: list[Quote] = [record for record, _, _ in items]  # type: ignore[misc]
        forwards = [self.forwards.get((q.product, q.expiry), self.spots.get(q.product)) for q in quotes]
        # The model goes to MongoDB only; without it, the surface needs just the IVs.
        models = model_quotes(quotes, forwards, self.model) if self.persist else None
        ivs = [model["iv"] for model in models] if models is not None else quote_ivs(quotes, forwards, self.model)
        touched: set[str] = set()
        for i, ((_, raw, key), quote) in enumerate(zip(items, quotes, strict=True)):
            # The cache keeps the quote as received (CONTRACT §2): its own bytes, not encoded
            # again, unless it is a GDF row, which carries the canonical names too (README).
            value = orjson.dumps(quote.doc) if is_gdf(quote.doc) else raw.data
            applied.outputs.set(keys.option_key(quote.symbol), value, ttl, quote.stamp)
            self.surfaces.apply_quote(quote, quote.doc["timestamp"], ivs[i])
            touched.add(quote.product)
            if models is not None:
                doc = {**quote.doc, "model": models[i], "_id": quote.identity, "timestamp": quote.timestamp}
                doc["processed_at"] = now
                applied.documents.append(Pending(doc, key, OPTION_QUOTE, raw.data, raw.receipt))
        self.dirty |= touched
        return applied

    def chains(self, items: list[Item], results: ChainResults, now: datetime) -> Applied:
        applied, ttl = Applied(), self._settings.cache_ttl
        out = applied.outputs
        touched: set[str] = set()
        for (record, raw, key), metrics, (model, snapshot) in zip(items, *results, strict=True):
            chain: Chain = record  # type: ignore[assignment]
            where = (chain.product, chain.expiry)
            self.snapshots[where] = snapshot
            # Not from a chain older than the snapshot kept: one that arrives late.
            if model.forward is not None and snapshot.timestamp <= chain.timestamp:
                self.forwards[where] = model.forward
            received = chain.doc["timestamp"]
            position = {strike: index for index, strike in enumerate(chain.strikes.tolist())}
            enriched: dict[str, Any] = {
                **chain.doc,
                **metrics._asdict(),
                "calls": _with_models(chain.doc["calls"], position, model.call_models()),
                "puts": _with_models(chain.doc["puts"], position, model.put_models()),
                "model": model.to_json(),
                "processed_at": now,  # orjson writes ISO-8601; MongoDB gets a datetime
            }
            data = orjson.dumps(enriched)
            stamp = chain.stamp
            out.set(keys.chain_key(chain.product, chain.expiry), data, ttl, stamp)
            pcr = {"pcr_oi": metrics.pcr_oi, "pcr_volume": metrics.pcr_volume, "timestamp": received}
            out.set(keys.pcr_key(chain.product, chain.expiry), orjson.dumps(pcr), ttl, stamp)
            out.publish(keys.ENRICHED_CHAIN, data)
            self.surfaces.apply_model(chain, model, received)
            touched.add(chain.product)
            if self.persist:
                doc = {**enriched, "_id": chain.identity, "timestamp": chain.timestamp}
                applied.documents.append(Pending(doc, key, OPTION_CHAIN, raw.data, raw.receipt))
        self.dirty |= touched
        return applied

    def surface_outputs(self) -> tuple[set[str], Applied]:
        """The surface keys (and, once per interval, a MongoDB snapshot) of every product
        changed since the last call, and those products; they are clean again after it."""
        products, self.dirty = self.dirty, set()
        applied, settings = Applied(), self._settings
        for product in sorted(products):
            snapshot = self.surfaces.snapshot(product)
            if snapshot is None:
                continue
            stamp = self.surfaces.stamp(product)
            applied.outputs.set(keys.surface_key(product), orjson.dumps(snapshot), settings.cache_ttl, stamp)
            points = self.surfaces.points(product, settings.iv_surface_max)
            applied.outputs.replace_sorted_set(keys.iv_surface_key(product), points, stamp)
            now = time.monotonic()
            if now - self._surface_saved.get(product, -1e18) >= settings.surface_snapshot_interval:
                self._surface_saved[product] = now
                doc = {**snapshot, "_id": f"{product}:{stamp}", "timestamp": self.surfaces.newest(product)}
                applied.extras.append((SURFACES, Pending(doc, "", "internal", b"")))
        return products, applied


def _with_models(
    rows: list[dict[str, Any]], position: dict[float, int], models: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows as received, each given its `model` in place: rows are in input order, models
    in strike order (`position` maps a strike to its index). In place, because nothing reads
    the rows after this and copying them cost ~15 µs a 21-strike chain."""
    for row in rows:
        row["model"] = models[position[float(row["strike"])]]
    return rows


def _candle_document(candle: Candle) -> Pending:
    doc = candle.to_json()
    doc.update(start_time=candle.start_time, end_time=candle.end_time)
    doc["_id"] = f"{candle.product}:{candle.window_minutes}:{candle.start_stamp}"
    return Pending(doc, "", "internal", b"")
