"""OHLC candles from ticks, kept in memory and aligned on event time (CONTRACT §2 `ohlc:` keys).

A candle covers [start, start + window), where start is the tick's event time floored to
the window on the UTC epoch. `CandleBook.add` runs for every tick in the event loop, so
its common path (a tick inside the current candles) is a few attribute updates per window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from enricher.records import utc_iso

WINDOWS_MINUTES: Final = (1, 5, 15)


@dataclass(slots=True)
class Candle:
    """One product's candle for one window. The book mutates the current candle in place."""

    product: str
    window_minutes: int
    open: float
    high: float
    low: float
    close: float
    start_time: datetime  # aware, UTC
    end_time: datetime  # start_time + window
    num_ticks: int
    # Event times (epoch seconds) of the ticks that set open and close: a tick that arrives
    # out of order inside the candle may be earlier than the open or later than the close.
    first_tick_epoch: float
    last_tick_epoch: float
    # start_time as epoch seconds, cached because every tick compares against it; and the
    # times as the outputs spell them, cached because every batch writes its candles again.
    start_epoch: float = field(init=False, repr=False, compare=False)
    start_stamp: str = field(init=False, repr=False, compare=False)  # records.utc_iso(start_time)
    start_text: str = field(init=False, repr=False, compare=False)  # start_time.isoformat()
    end_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.start_epoch = self.start_time.timestamp()
        self.start_stamp = utc_iso(self.start_time)
        self.start_text = self.start_time.isoformat()
        self.end_text = self.end_time.isoformat()

    def to_json(self) -> dict[str, Any]:
        """The value of `ohlc:{product}:{w}m`."""
        return {
            "product": self.product,
            "window_minutes": self.window_minutes,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "start_time": self.start_text,
            "end_time": self.end_text,
            "num_ticks": self.num_ticks,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Candle:
        """A candle from its `ohlc:` value, e.g. to `restore` it after a takeover.

        The JSON has no tick times, so both are set to the start: a later out-of-order
        tick then can't move the open, and any later tick moves the close.
        """
        start = datetime.fromisoformat(doc["start_time"]).astimezone(UTC)
        return cls(
            product=doc["product"],
            window_minutes=int(doc["window_minutes"]),
            open=float(doc["open"]),
            high=float(doc["high"]),
            low=float(doc["low"]),
            close=float(doc["close"]),
            start_time=start,
            end_time=datetime.fromisoformat(doc["end_time"]).astimezone(UTC),
            num_ticks=int(doc["num_ticks"]),
            first_tick_epoch=start.timestamp(),
            last_tick_epoch=start.timestamp(),
        )


class TickOutcome(NamedTuple):
    """What one tick did to the book."""

    changed: list[Candle]  # current candles the tick was merged into (live objects)
    closed: list[Candle]  # candles finished because the tick opened the next one
    too_late: list[int]  # windows (minutes) whose current candle began after the tick


class CandleBook:
    """Current candles of many products, one per window; closed candles are handed back, not kept."""

    def __init__(self, windows_minutes: Iterable[int] = WINDOWS_MINUTES) -> None:
        self.windows_minutes = tuple(windows_minutes)
        if not self.windows_minutes or min(self.windows_minutes) <= 0:
            raise ValueError(f"windows must be positive minutes, got {self.windows_minutes}")
        if len(set(self.windows_minutes)) != len(self.windows_minutes):
            raise ValueError(f"windows must be distinct, got {self.windows_minutes}")
        self._widths = tuple(60 * minutes for minutes in self.windows_minutes)
        # product -> current candle per window, in windows_minutes order
        self._current: dict[str, list[Candle | None]] = {}
        self.too_late_counts: dict[int, int] = dict.fromkeys(self.windows_minutes, 0)

    def add(self, product: str, price: float, ts: datetime) -> TickOutcome:
        """Merge one tick (event time `ts`, aware) into every window's current candle."""
        if ts.tzinfo is None:
            raise ValueError("tick time must be timezone-aware")
        epoch = ts.timestamp()
        slots = self._current.get(product)
        if slots is None:
            slots = self._current[product] = [None] * len(self._widths)
        changed: list[Candle] = []
        closed: list[Candle] = []
        too_late: list[int] = []
        for i, width in enumerate(self._widths):
            start = epoch - epoch % width
            candle = slots[i]
            if candle is not None and candle.start_epoch == start:
                if price > candle.high:
                    candle.high = price
                elif price < candle.low:
                    candle.low = price
                if epoch >= candle.last_tick_epoch:  # equal times: the later arrival closes
                    candle.close = price
                    candle.last_tick_epoch = epoch
                elif epoch < candle.first_tick_epoch:
                    candle.open = price
                    candle.first_tick_epoch = epoch
                candle.num_ticks += 1
            elif candle is None or candle.start_epoch < start:
                if candle is not None:
                    closed.append(candle)
                candle = slots[i] = self._open(product, self.windows_minutes[i], start, price, epoch)
            else:
                # The window has moved on and its earlier candle is already closed.
                window = self.windows_minutes[i]
                self.too_late_counts[window] += 1
                too_late.append(window)
                continue
            changed.append(candle)
        return TickOutcome(changed, closed, too_late)

    def current(self, product: str, window_minutes: int) -> Candle | None:
        slots = self._current.get(product)
        return None if slots is None else slots[self._window_index(window_minutes)]

    def current_candles(self) -> list[Candle]:
        """Every open candle, e.g. to persist them at shutdown."""
        return [candle for slots in self._current.values() for candle in slots if candle is not None]

    def restore(self, candle: Candle) -> bool:
        """Seed a window's current candle with a copy; False if the book's own is as new or newer.

        Restore before feeding ticks: a candle already opened here for the same period is
        kept as it is, not merged with the restored one.
        """
        i = self._window_index(candle.window_minutes)
        slots = self._current.setdefault(candle.product, [None] * len(self._widths))
        held = slots[i]
        if held is not None and held.start_epoch >= candle.start_epoch:
            return False
        slots[i] = dataclasses.replace(candle)
        return True

    def _window_index(self, window_minutes: int) -> int:
        try:
            return self.windows_minutes.index(window_minutes)
        except ValueError:
            raise ValueError(f"no {window_minutes}m window, only {self.windows_minutes}") from None

    @staticmethod
    def _open(product: str, window_minutes: int, start: float, price: float, epoch: float) -> Candle:
        start_time = datetime.fromtimestamp(start, UTC)
        return Candle(
            product=product,
            window_minutes=window_minutes,
            open=price,
            high=price,
            low=price,
            close=price,
            start_time=start_time,
            end_time=start_time + timedelta(minutes=window_minutes),
            num_ticks=1,
            first_tick_epoch=epoch,
            last_tick_epoch=epoch,
        )
