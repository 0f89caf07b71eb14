"""The start-up warm-up (warmup.py): every channel's code runs, and nothing is logged."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from enricher import warmup
from enricher.settings import Settings
from enricher.state import MarketState


@pytest.mark.parametrize("persist", [True, False])
def test_warm_up_runs_each_channel_every_round(monkeypatch: pytest.MonkeyPatch, persist: bool) -> None:
    seen: dict[str, list[int]] = {"ticks": [], "quotes": [], "chains": []}
    for name in seen:
        original = getattr(MarketState, name)

        def counted(self: MarketState, items: list[Any], *rest: Any, _name: str = name, _run: Any = original) -> Any:
            seen[_name].append(len(items))
            return _run(self, items, *rest)

        monkeypatch.setattr(MarketState, name, counted)
    with capture_logs() as logged:
        seconds = warmup.warm_up(Settings(persist=persist, feed_tz="Asia/Kolkata"), rounds=3)
    assert seconds > 0.0
    assert seen["ticks"] == [8, 8, 8]  # one per product, each round
    assert seen["chains"] == [8, 8, 8]
    assert len(seen["quotes"]) == 3
    assert min(seen["quotes"]) > 0
    # A state of its own: no feed gap, no late tick, nothing worth a warning at start-up.
    assert [entry for entry in logged if entry["log_level"] != "debug"] == []


def test_a_warm_up_the_settings_refuse_is_a_warning_not_a_failed_start() -> None:
    with capture_logs() as logged:
        warmup.warm_up(Settings(max_strikes=5), rounds=2)  # the synthetic chains have 21 strikes
    [warning] = [entry for entry in logged if entry["log_level"] != "debug"]
    assert warning["event"] == "warm_up_failed"
    assert warning["error_type"] == "InvalidMessage"
