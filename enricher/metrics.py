"""In-process counters and gauges, cheap enough for the per-message path.

Plain integers in dicts: a Prometheus collector (or the shutdown summary, or the demo)
reads them when asked, so the hot path never takes a lock or formats anything.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from enricher.histograms import Histograms

# Per-channel message outcomes. Every message received ends in exactly one of the last five.
RECEIVED = "received"
PROCESSED = "processed"
DUPLICATE = "duplicate"
INVALID = "invalid"  # dead-lettered as bad input
FAILED = "failed"  # dead-lettered after an error while processing
OVERFLOW = "overflow"  # hit a full queue (then: dead-lettered or dropped, by policy)
DROPPED = "dropped"  # lost by a drop_* overflow policy


@dataclass
class Metrics:
    messages: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    events: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_message_at: dict[str, float] = field(default_factory=dict)
    histograms: Histograms = field(default_factory=Histograms)  # what Prometheus scrapes
    started_at: float = field(default_factory=time.time)

    def count(self, channel: str, outcome: str, n: int = 1) -> None:
        self.messages[channel, outcome] += n

    def event(self, name: str, n: int = 1) -> None:
        self.events[name] += n

    def total(self, outcome: str) -> int:
        return sum(n for (_, kind), n in self.messages.items() if kind == outcome)

    def summary(self) -> dict[str, object]:
        by_channel: dict[str, dict[str, int]] = defaultdict(dict)
        for (channel, outcome), n in sorted(self.messages.items()):
            by_channel[channel][outcome] = n
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "messages": dict(by_channel),
            "events": dict(sorted(self.events.items())),
        }
