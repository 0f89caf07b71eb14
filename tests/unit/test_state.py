"""MarketState: what a batch leaves behind for the batches after it."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from enricher.analytics.jobs import chain_job
from enricher.messages import parse
from enricher.metrics import Metrics
from enricher.records import OPTION_CHAIN, Chain
from enricher.settings import Settings
from enricher.source import RawMessage
from enricher.state import MarketState
from tests.conftest import sample

CHAIN = sample("synthetic_option_chain.json")


def chain_at(stamp: str, calls_dearer_by: float = 0.0) -> bytes:
    doc = orjson.loads(CHAIN)
    doc["timestamp"] = stamp
    for row in doc["calls"]:  # dearer calls: put-call parity puts the forward higher
        row.update(
            bid=row["bid"] + calls_dearer_by, ask=row["ask"] + calls_dearer_by, last=row["last"] + calls_dearer_by
        )
    return orjson.dumps(doc)


def apply(state: MarketState, payload: bytes) -> float | None:
    """Analyse one chain into `state`; return its own model's forward."""
    chain = parse(OPTION_CHAIN, payload, feed_tz=UTC)
    assert isinstance(chain, Chain)
    results = chain_job([chain], state.previous([chain]), state.model)
    state.chains([(chain, RawMessage(OPTION_CHAIN, payload, 0.0), "")], results, datetime.now(UTC))
    return results[1][0][0].forward


def test_a_late_chain_does_not_set_back_the_forward_quotes_are_priced_on() -> None:
    state = MarketState(Settings(), Metrics())
    where = ("NIFTY", "2025-01-23")
    kept = apply(state, chain_at("2025-01-20T10:15:35.000000"))
    assert state.forwards[where] == kept
    late = apply(state, chain_at("2025-01-20T10:15:30.000000", calls_dearer_by=20.0))
    assert late is not None
    assert kept is not None
    assert late > kept  # its own forward differs
    assert state.forwards[where] == kept  # the newer chain's still
    newer = apply(state, chain_at("2025-01-20T10:15:40.000000", calls_dearer_by=20.0))
    assert state.forwards[where] == newer  # a newer chain moves it
