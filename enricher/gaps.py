"""Make what pub/sub loses visible: gaps in the feed's tick counter and in each product's ticks.

The synthetic feed numbers ticks with one counter shared by all products, so a jump in it
means ticks were published that never reached us (a reconnect, a drop upstream). A counter
that goes back means the feed restarted. Independently, a product whose ticks stop for more
than `max_silence` seconds of event time has a time gap. Feeds whose `tick_id` is not a
shared counter (GlobalDataFeeds sends epoch milliseconds) should turn the counter check off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

from enricher.metrics import Metrics

log = structlog.get_logger("enricher.gaps")


@dataclass
class GapDetector:
    metrics: Metrics
    check_counter: bool = True
    max_silence: float = 10.0  # seconds of event time
    _highest: int | None = None
    _last_seen: dict[str, float] = field(default_factory=dict)

    def observe(self, product: str, tick_id: int, event_time: datetime) -> None:
        if self.check_counter:
            self._counter(tick_id)
        moment = event_time.timestamp()
        previous = self._last_seen.get(product)
        if previous is None or moment > previous:
            self._last_seen[product] = moment
            if previous is not None and moment - previous > self.max_silence:
                self._gap("time", product=product, seconds=round(moment - previous, 3))

    def _counter(self, tick_id: int) -> None:
        highest = self._highest
        if highest is None or tick_id > highest:
            if highest is not None and tick_id > highest + 1:
                missing = tick_id - highest - 1
                self.metrics.event("feed_gap_ticks", missing)
                self._gap("tick_id", missing=missing, after=highest)
            self._highest = tick_id
        elif tick_id < highest - 1000:  # far back: the feed restarted and counts from 0 again
            self.metrics.event("feed_restarts")
            log.warning("feed_restart", tick_id=tick_id, previous_highest=highest)
            self._highest = tick_id

    def _gap(self, kind: str, **fields: object) -> None:
        self.metrics.event("feed_gaps")
        log.warning("feed_gap", kind=kind, **fields)
