"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter")."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

_JITTER: Final = random.Random()


@dataclass
class Backoff:
    base: float = 0.05
    cap: float = 5.0
    attempt: int = 0
    # One generator for all: random.Random() seeds itself from os.urandom, and the pipeline
    # makes a Backoff per batch (py-spy: ~2% of the event loop at 10x the feed's pace).
    _random: random.Random = field(default=_JITTER, repr=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._random.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
