"""Start-up warm-up, so that the first chain second costs what later ones do.

CPython 3.11 specialises a function's bytecode only after it has run a few times (PEP 659),
and numpy and orjson set things up on first use. At the real pace the ticks and quotes of the
first feed seconds warm their own code, but the chain code first runs when the first chains
arrive. Timing each step of the daemon's batches at the real pace (bench.throughput's paced
mode, 6-s runs, seven alternating runs each), that first batch's model of eight chains took
1.56-1.69 ms cold and 1.31-1.43 ms after this warm-up (in five runs; the machine slowed the
other two), about what later chain seconds take. So before it subscribes, the
daemon parses, analyses and renders the outputs of a few synthetic feed seconds, every channel,
against a state of their own that is then dropped: nothing is written, published or counted.
They are dated January 2025, so the caches keyed by expiry or by minute get nothing that a live
feed will look up: what warms is the code, not the data.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog

from enricher.analytics.jobs import chain_job
from enricher.feed.synthetic import SyntheticFeed
from enricher.messages import parse
from enricher.metrics import Metrics
from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING, Chain
from enricher.settings import Settings
from enricher.source import RawMessage
from enricher.state import Item, MarketState

log = structlog.get_logger("enricher.warmup")
START: Final = datetime(2025, 1, 20, 4, 0, tzinfo=UTC)


def warm_up(settings: Settings, rounds: int) -> float:
    """Run `rounds` synthetic feed seconds, each with a chain per product, through the parse, the
    analytics and the output building, in the settings' mode; return the seconds it took.

    It is an optimisation, so it never stops a start: if the settings refuse the synthetic
    messages (say `ENRICHER_MAX_STRIKES` below their 21 strikes), or anything else fails, it
    logs why and the daemon starts cold."""
    started = time.perf_counter()
    try:
        _run(settings, rounds)
    except Exception as exc:  # a warm-up is worth a warning, never a failed start
        log.warning("warm_up_failed", error_type=type(exc).__name__, error=str(exc)[:200])
    return time.perf_counter() - started


def _run(settings: Settings, rounds: int) -> None:
    state = MarketState(settings, Metrics())
    feed = SyntheticFeed(seed=1, start=START, step=timedelta(milliseconds=10))
    for _ in range(rounds):
        by_channel: dict[str, list[bytes]] = {UNDERLYING: [], OPTION_QUOTE: [], OPTION_CHAIN: []}
        for channel, payload in feed.loop():
            if channel != OPTION_CHAIN:
                by_channel[channel].append(payload)
        for product in feed.products:
            by_channel[OPTION_CHAIN] += [payload for _, payload in feed.chain(product)]
        now = datetime.now(UTC)
        state.ticks(_items(settings, UNDERLYING, by_channel[UNDERLYING]), now)
        chains = _items(settings, OPTION_CHAIN, by_channel[OPTION_CHAIN])
        records: list[Chain] = [record for record, _, _ in chains]  # type: ignore[misc]
        state.chains(chains, chain_job(records, state.previous(records), state.model), now)
        state.quotes(_items(settings, OPTION_QUOTE, by_channel[OPTION_QUOTE]), now)
        state.surface_outputs()


def _items(settings: Settings, channel: str, payloads: list[bytes]) -> list[Item]:
    return [
        (
            parse(
                channel,
                payload,
                feed_tz=settings.tz,
                max_bytes=settings.max_message_bytes,
                max_strikes=settings.max_strikes,
            ),
            RawMessage(channel, payload, 0.0),
            "",
        )
        for payload in payloads
    ]
