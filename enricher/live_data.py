"""What the live view (live.py) shows, read from its sources: Redis for the market, the app for the pipeline.

Market data always comes from the daemon's Redis keys (CONTRACT §2): one SCAN finds the
products and their chains, one MGET reads every value the screen needs. Pipeline figures
come either from an in-process `Enricher` (the demo) or from scraping the daemon's
`/metrics` (`python -m enricher top`); both fill the same `PipelineStats`, and both keep
counters and histogram buckets cumulative, so rates and percentiles are computed the same
way from the difference of two samples.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError

from enricher.exposition import AppView
from enricher.histograms import DLQ_LENGTH, PROCESSING
from enricher.metrics import DUPLICATE, FAILED, INVALID, OVERFLOW, PROCESSED, RECEIVED
from enricher.records import CHANNELS
from enricher.redact import redact_text, redact_url

Buckets = tuple[tuple[float, float], ...]  # cumulative (upper bound, count), ending with +Inf

UNDERLYING_PREFIX = "latest:underlying:"
CHAIN_PREFIX = "latest:chain:"


@dataclass(frozen=True, slots=True)
class Candle:
    open: float
    high: float
    low: float
    close: float
    ticks: int


@dataclass(frozen=True, slots=True)
class ProductRow:
    """One product as the daemon last wrote it; None where a key is missing or lacks the field."""

    product: str
    spot: float | None = None
    tick_time: str | None = None
    expiry: str | None = None  # of the chain shown: the nearest one in Redis
    pcr_oi: float | None = None
    pcr_volume: float | None = None
    max_pain: float | None = None
    straddle: float | None = None
    atm_iv: float | None = None  # a fraction: 0.142 = 14.2 %
    expected_move: float | None = None  # straddle-based, in price units
    candles: Mapping[int, Candle] = field(default_factory=dict)  # window minutes -> candle


@dataclass(frozen=True, slots=True)
class Market:
    rows: tuple[ProductRow, ...] = ()
    error: str | None = None  # Redis unreachable: the view keeps the last rows it had


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """One sample of the daemon's counters; counters and buckets are cumulative since its start."""

    at: float  # time.monotonic() when taken
    source: str  # "in-process" or the scraped URL
    messages: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (channel, outcome) -> count
    depth: Mapping[str, float] = field(default_factory=dict)
    capacity: Mapping[str, float] = field(default_factory=dict)
    latency: Mapping[str, Buckets] = field(default_factory=dict)  # enricher_processing_seconds per channel
    dead_letters: float | None = None
    reconnects: float | None = None
    dlq_length: float | None = None
    started_at: float | None = None  # the daemon's start, wall clock
    error: str | None = None  # the scrape failed

    def channels(self) -> list[str]:
        seen = {channel for channel, _ in self.messages} | set(self.depth)
        return [*(c for c in CHANNELS if c in seen or not seen), *sorted(seen - set(CHANNELS))]


@dataclass(frozen=True, slots=True)
class ChannelLine:
    """One channel over the window between two samples (rate, percentiles) and now (the rest)."""

    channel: str
    rate: float | None  # messages received per second
    processed: float
    duplicate: float
    rejected: float  # invalid + failed: dead-lettered
    overflow: float
    depth: float | None
    capacity: float | None
    p50: float | None  # seconds
    p99: float | None


# --- market data -------------------------------------------------------------------------


async def read_market(redis: Redis, windows: Sequence[int] = (1, 5)) -> Market:
    """One SCAN (ticks and chains in one pass) and one MGET; a Redis error becomes `Market.error`."""
    try:
        return await _read_market(redis, windows)
    except (RedisError, OSError) as exc:
        return Market(error=redact_text(f"{type(exc).__name__}: {exc}")[:200])


async def _read_market(redis: Redis, windows: Sequence[int]) -> Market:
    products: set[str] = set()
    expiries: dict[str, str] = {}
    # `latest:[uc]*` matches latest:underlying:* and latest:chain:*, not the many latest:option:*.
    async for raw in redis.scan_iter(match="latest:[uc]*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if key.startswith(UNDERLYING_PREFIX):
            products.add(key.removeprefix(UNDERLYING_PREFIX))
        elif key.startswith(CHAIN_PREFIX):
            product, _, expiry = key.removeprefix(CHAIN_PREFIX).rpartition(":")
            if product:
                products.add(product)
                if product not in expiries or expiry < expiries[product]:
                    expiries[product] = expiry  # YYYY-MM-DD sorts by date: the nearest expiry
    ordered = sorted(products)
    keys: list[str] = []
    for product in ordered:
        keys.append(f"{UNDERLYING_PREFIX}{product}")
        keys.extend(f"ohlc:{product}:{w}m" for w in windows)
        if product in expiries:
            keys.append(f"{CHAIN_PREFIX}{product}:{expiries[product]}")
    values = iter(await redis.mget(keys)) if keys else iter(())
    rows = []
    for product in ordered:
        tick = _json(next(values))
        candles = {w: c for w in windows if (c := _candle(_json(next(values)))) is not None}
        chain = _json(next(values)) if product in expiries else {}
        rows.append(_row(product, tick, candles, chain, expiries.get(product)))
    return Market(tuple(rows))


def _row(
    product: str, tick: dict[str, Any], candles: dict[int, Candle], chain: dict[str, Any], expiry: str | None
) -> ProductRow:
    model = chain.get("model")
    model = model if isinstance(model, dict) else {}
    return ProductRow(
        product=product,
        spot=_number(tick.get("price")),
        tick_time=str(tick["timestamp"]) if "timestamp" in tick else None,
        expiry=expiry if chain else None,
        pcr_oi=_number(chain.get("pcr_oi")),
        pcr_volume=_number(chain.get("pcr_volume")),
        max_pain=_number(chain.get("max_pain_strike")),
        straddle=_number(chain.get("atm_straddle_price")),
        atm_iv=_number(model.get("atm_iv")),
        expected_move=_number(model.get("expected_move_straddle")),
        candles=candles,
    )


def _json(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _candle(doc: dict[str, Any]) -> Candle | None:
    o, h, lo, c = (_number(doc.get(k)) for k in ("open", "high", "low", "close"))
    if o is None or h is None or lo is None or c is None:
        return None
    ticks = doc.get("num_ticks")
    return Candle(o, h, lo, c, ticks if isinstance(ticks, int) else 0)


# --- pipeline statistics -----------------------------------------------------------------


def stats_from_app(app: AppView) -> PipelineStats:
    """A sample of an in-process app's counters (what its /metrics would say, without HTTP)."""
    metrics = app.metrics
    histograms = metrics.histograms
    events = metrics.events.copy()
    queues = dict(app.queues)
    return PipelineStats(
        at=time.monotonic(),
        source="in-process",
        messages={key: float(n) for key, n in metrics.messages.copy().items()},
        depth={channel: float(queue.depth()) for channel, queue in queues.items()},
        capacity={channel: float(queue.capacity) for channel, queue in queues.items()},
        latency={
            channel: tuple((float(le), n) for le, n in histograms.series(PROCESSING, channel).buckets())
            for channel in queues
        },
        dead_letters=float(events.get("dead_lettered", 0)),
        reconnects=float(events.get("redis_reconnects", 0)),
        dlq_length=histograms.gauge(DLQ_LENGTH),
        started_at=metrics.started_at,
    )


def parse_metrics(text: str, source: str, at: float | None = None) -> PipelineStats:
    """The figures the view needs from a Prometheus text exposition of the daemon."""
    messages: dict[tuple[str, str], float] = {}
    depth: dict[str, float] = {}
    capacity: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    scalars: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "enricher_messages_total":
                messages[labels.get("channel", ""), labels.get("outcome", "")] = value
            elif name == "enricher_queue_depth":
                depth[labels.get("channel", "")] = value
            elif name == "enricher_queue_capacity":
                capacity[labels.get("channel", "")] = value
            elif name == f"{PROCESSING}_bucket":
                buckets.setdefault(labels.get("channel", ""), []).append((float(labels["le"]), value))
            elif not labels:
                scalars[name] = value
    return PipelineStats(
        at=time.monotonic() if at is None else at,
        source=source,
        messages=messages,
        depth=depth,
        capacity=capacity,
        latency={channel: tuple(sorted(pairs)) for channel, pairs in buckets.items()},
        dead_letters=scalars.get("enricher_dead_letters_total"),
        reconnects=scalars.get("enricher_redis_reconnects_total"),
        dlq_length=scalars.get(DLQ_LENGTH),
        started_at=scalars.get("enricher_start_time_seconds"),
    )


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


async def scrape_stats(url: str, timeout: float = 2.0) -> PipelineStats:
    """GET `url` in a thread and parse it; any failure becomes `PipelineStats.error`."""
    at, source = time.monotonic(), redact_url(url)
    try:
        text = await asyncio.to_thread(_fetch, url, timeout)
        return parse_metrics(text, source, at)
    except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
        return PipelineStats(at=at, source=source, error=redact_text(f"{type(exc).__name__}: {exc}")[:200])


def restarted(old: PipelineStats, new: PipelineStats) -> bool:
    """The daemon restarted between the samples (or they are from two daemons): differences are void."""
    if old.started_at != new.started_at:
        return True
    return any(n < old.messages.get(key, 0.0) for key, n in new.messages.items())


def channel_lines(new: PipelineStats, base: PipelineStats | None) -> list[ChannelLine]:
    """Per channel: rates and percentiles over [base, new], or None without a usable base."""
    usable = base is not None and not base.error and not new.error and new.at > base.at and not restarted(base, new)
    span = new.at - base.at if base is not None else 0.0
    lines = []
    for channel in new.channels():

        def total(outcome: str, channel: str = channel) -> float:
            return new.messages.get((channel, outcome), 0.0)

        rate = p50 = p99 = None
        if usable and base is not None:
            rate = (total(RECEIVED) - base.messages.get((channel, RECEIVED), 0.0)) / span
            window = bucket_delta(new.latency.get(channel, ()), base.latency.get(channel, ()))
            p50, p99 = bucket_quantile(window, 0.5), bucket_quantile(window, 0.99)
        lines.append(
            ChannelLine(
                channel=channel,
                rate=rate,
                processed=total(PROCESSED),
                duplicate=total(DUPLICATE),
                rejected=total(INVALID) + total(FAILED),
                overflow=total(OVERFLOW),
                depth=new.depth.get(channel),
                capacity=new.capacity.get(channel),
                p50=p50,
                p99=p99,
            )
        )
    return lines


def bucket_delta(new: Buckets, old: Buckets) -> Buckets:
    """The observations between two cumulative samples of one histogram (same bounds)."""
    before = dict(old)
    return tuple((le, max(0.0, n - before.get(le, 0.0))) for le, n in new)


def bucket_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket; the top finite bound past it."""
    pairs = list(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower, below = 0.0, 0.0
    for le, count in pairs:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower
