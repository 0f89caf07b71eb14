"""The live terminal view: `python -m enricher top`, and the screen of `python -m enricher demo`.

One row per product (spot, change since the view started, sparkline, PCR, max pain, ATM
straddle and IV, expected move, 1m and 5m candles) read from the daemon's Redis keys, and
the pipeline (rates, queues, processing latency, dead letters) read from the app in-process
or from its `/metrics`. In a terminal it redraws in place with rich's `Live`; piped, or with
TERM=dumb, it prints a summary line and one line per product at each refresh instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TextIO

from redis.asyncio import Redis
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from enricher.live_data import (
    Candle,
    ChannelLine,
    Market,
    PipelineStats,
    ProductRow,
    channel_lines,
    read_market,
    restarted,
    scrape_stats,
)

StatsSource = Callable[[], Awaitable[PipelineStats]]
BARS = "▁▂▃▄▅▆▇█"
SHORT = {"market:underlying": "ticks", "market:option_quote": "quotes", "market:option_chain": "chains"}


def sparkline(values: list[float] | deque[float]) -> str:
    """One bar per value, scaled between the lowest and the highest; flat prices give a flat line."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return BARS[3] * len(values)
    top = len(BARS) - 1
    return "".join(BARS[round((v - low) / (high - low) * top)] for v in values)


class LiveView:
    """What the screen shows, and the little history it needs (first prices, sparklines, samples)."""

    def __init__(self, *, refresh: float = 1.0, window: float = 10.0, spark: int = 30) -> None:
        if not refresh > 0:
            raise ValueError("the refresh interval must be positive")
        self.refresh = refresh
        self.window = window  # seconds that rates and percentiles are computed over
        self.started = time.monotonic()
        self.rows: tuple[ProductRow, ...] = ()
        self.market_error: str | None = None
        self.stats: PipelineStats | None = None
        self.samples: deque[PipelineStats] = deque()
        self.first: dict[str, float] = {}
        self.sparks: dict[str, deque[float]] = {}
        self._spark_len = spark
        self._last_tick: dict[str, str | None] = {}

    def update(self, market: Market, stats: PipelineStats) -> None:
        if market.error is None:
            self.rows = market.rows
        self.market_error = market.error
        for row in market.rows:
            if row.spot is None:
                continue
            self.first.setdefault(row.product, row.spot)
            if self._last_tick.get(row.product, "") != row.tick_time:  # a new tick, not the same one again
                self._last_tick[row.product] = row.tick_time
                self.sparks.setdefault(row.product, deque(maxlen=self._spark_len)).append(row.spot)
        self.stats = stats
        if stats.error is None:
            if self.samples and restarted(self.samples[-1], stats):
                self.samples.clear()
            self.samples.append(stats)
            while len(self.samples) > 2 and self.samples[1].at <= stats.at - self.window:
                self.samples.popleft()

    def lines(self) -> tuple[list[ChannelLine], float]:
        """Per channel figures, and the span in seconds the rates cover (0 = not yet)."""
        if not self.samples:
            return (channel_lines(self.stats, None) if self.stats else []), 0.0
        new, base = self.samples[-1], self.samples[0]
        if base is new:
            return channel_lines(new, None), 0.0
        return channel_lines(new, base), new.at - base.at

    def change(self, row: ProductRow) -> float | None:
        first = self.first.get(row.product)
        if row.spot is None or not first:
            return None
        return (row.spot - first) / first * 100.0

    # --- rich ------------------------------------------------------------------------------

    def render(self, width: int = 160) -> RenderableType:
        """The screen for a terminal `width` columns wide: narrower ones lose candles, then sparklines."""
        lines, span = self.lines()
        stats = self.samples[-1] if self.samples else self.stats
        header = Text.assemble(
            ("enricher live", "bold cyan"),
            f"  {time.strftime('%H:%M:%S')}",
            f"  up {_duration(time.time() - stats.started_at)}" if stats and stats.started_at else "",
            f"  ·  pipeline: {stats.source if stats else '-'}",
            f"  ·  refresh {self.refresh:g} s",
            ("  ·  Δ = change since the view started", "dim"),
        )
        products = self._products(candles=width >= 150, spark=width >= 106)
        return Group(header, products, self._pipeline(lines, span, short=width < 105), self._footer(stats))

    def _products(self, *, candles: bool, spark: bool) -> Table:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, expand=False)
        table.add_column("product\nexpiry", no_wrap=True)
        table.add_column("spot", justify="right", no_wrap=True)
        table.add_column("Δ", justify="right", no_wrap=True)
        if spark:
            table.add_column(f"spot, last {self._spark_len} samples", no_wrap=True, min_width=self._spark_len)
        table.add_column("PCR\noi/vol", justify="right", no_wrap=True)
        table.add_column("max\npain", justify="right", no_wrap=True)
        table.add_column("ATM\nstraddle", justify="right", no_wrap=True)
        table.add_column("ATM\nIV", justify="right", no_wrap=True)
        table.add_column("exp.\nmove", justify="right", no_wrap=True)
        if candles:
            table.add_column("candles o/h/l/c ·ticks", no_wrap=True)
        for row in self.rows:
            change = self.change(row)
            style = "green" if change and change > 0 else "red" if change and change < 0 else ""
            cells: list[RenderableType] = [
                Text.assemble((row.product, "bold"), "\n", (row.expiry or "-", "dim")),
                _num(row.spot, 2),
                Text(_signed(change), style=style),
            ]
            if spark:
                cells.append(Text(sparkline(self.sparks.get(row.product, deque())), style="cyan"))
            cells += [
                f"{_num(row.pcr_oi, 3)}\n{_num(row.pcr_volume, 3)}",
                _num(row.max_pain, 0),
                _num(row.straddle, 2),
                _pct(row.atm_iv),
                _move(row),
            ]
            if candles:
                cells.append("\n".join(f"{w}m {_candle(row.candles.get(w), compact=True)}" for w in (1, 5)))
            table.add_row(*cells)
        if not self.rows:
            table.add_row("(no latest:underlying:* keys yet)")
        return table

    def _pipeline(self, lines: list[ChannelLine], span: float, *, short: bool) -> Table:
        over = f"over the last {span:.0f} s" if span else "(waiting for a second sample)"
        table = Table(
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            pad_edge=False,
            title=f"pipeline: in/s and processing p50/p99 {over} (enricher_processing_seconds bucket deltas)",
            title_justify="left",
            title_style="bold",
        )
        names = ("channel", "in/s", "processed", "duplicate", "dead-lettered", "overflow", "queue", "p50 ms", "p99 ms")
        if short:
            names = ("", "in/s", "done", "dup", "dead", "ovf", "queue", "p50", "p99")
        for index, name in enumerate(names):
            table.add_column(name, justify="right" if index else "left", no_wrap=True)
        for line in lines:
            queue = f"{_count(line.depth)}/{_count(line.capacity)}"
            busy = line.depth is not None and line.capacity and line.depth > 0.8 * line.capacity
            table.add_row(
                SHORT.get(line.channel, line.channel) if short else line.channel,
                _num(line.rate, 1),
                _count(line.processed),
                _count(line.duplicate),
                Text(_count(line.rejected), style="yellow" if line.rejected else ""),
                Text(_count(line.overflow), style="red" if line.overflow else ""),
                Text(queue, style="red" if busy else ""),
                _ms(line.p50),
                _ms(line.p99),
            )
        return table

    def _footer(self, stats: PipelineStats | None) -> Text:
        text = Text.assemble(
            "dead letters ",
            (_count(stats.dead_letters if stats else None), "bold"),
            "  ·  Redis reconnects ",
            (_count(stats.reconnects if stats else None), "bold"),
            "  ·  DLQ length ",
            (_count(stats.dlq_length if stats else None), "bold"),
        )
        if self.stats is not None and self.stats.error:
            text.append(f"\nmetrics: {self.stats.error}", style="red")
        if self.market_error:
            text.append(f"\nredis: {self.market_error}", style="red")
        return text

    # --- plain text ------------------------------------------------------------------------

    def plain_lines(self) -> list[str]:
        """One summary line, then one line per product."""
        lines, span = self.lines()
        stats = self.samples[-1] if self.samples else self.stats
        rates = ", ".join(f"{SHORT.get(x.channel, x.channel)} {_num(x.rate, 1)}/s" for x in lines)
        queues = " ".join(f"{_count(x.depth)}/{_count(x.capacity)}" for x in lines)
        latency = " ".join(f"{_ms(x.p50)}/{_ms(x.p99)}" for x in lines)
        summary = (
            f"[{time.monotonic() - self.started:5.0f} s] in ({span:.0f} s): {rates}  queues {queues}"
            f"  p50/p99 ms {latency}  processed {_count(sum(x.processed for x in lines))}"
            f"  dead letters {_count(stats.dead_letters if stats else None)}"
            f"  reconnects {_count(stats.reconnects if stats else None)}"
            f"  dlq {_count(stats.dlq_length if stats else None)}"
        )
        if self.stats is not None and self.stats.error:
            summary += f"  metrics: {self.stats.error}"
        if self.market_error:
            summary += f"  redis: {self.market_error}"
        out = [summary]
        for row in self.rows:
            move = "-" if row.expected_move is None else f"±{row.expected_move:.2f}"
            out.append(
                f"{row.product:<10}{_num(row.spot, 2):>11} {_signed(self.change(row)):>7}"
                f"  pcr {_num(row.pcr_oi, 3)}/{_num(row.pcr_volume, 3)}  max pain {_num(row.max_pain, 0)}"
                f"  straddle {_num(row.straddle, 2)}  iv {_pct(row.atm_iv)}  move {move}"
                f"  5m {_candle(row.candles.get(5))}  1m {_candle(row.candles.get(1))}"
            )
        return out


def _move(row: ProductRow) -> str:
    """The straddle-based expected move, and under it as a percentage of spot."""
    if row.expected_move is None:
        return "-"
    percent = f"\n{row.expected_move / row.spot * 100:.2f}%" if row.spot else ""
    return f"±{row.expected_move:.1f}{percent}"


def _num(value: float | None, places: int) -> str:
    return "-" if value is None else f"{value:.{places}f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _signed(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:+.2f}%"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _price(value: float, compact: bool) -> str:
    if not compact:
        return f"{value:.2f}"
    return f"{value:.1f}" if abs(value) >= 10_000 else f"{value:.2f}"


def _candle(candle: Candle | None, *, compact: bool = False) -> str:
    """o/h/l/c then the tick count: `, 12` in plain text (as the demo always printed), ` ·12` on screen."""
    if candle is None:
        return "-"
    prices = "/".join(_price(v, compact) for v in (candle.open, candle.high, candle.low, candle.close))
    return f"{prices} ·{candle.ticks}" if compact else f"{prices}, {candle.ticks}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def wants_plain(console: Console) -> bool:
    """Plain lines when stdout is not a terminal (a pipe, a file) or the terminal is dumb."""
    return not console.is_terminal or console.is_dumb_terminal or os.environ.get("TERM") == "dumb"


async def run_view(
    view: LiveView,
    redis: Redis,
    stats: StatsSource,
    stop: asyncio.Event,
    *,
    duration: float | None = None,
    plain: bool | None = None,
    console: Console | None = None,
    out: TextIO | None = None,
) -> None:
    """Refresh every `view.refresh` s until `stop` is set or `duration` s pass.

    The Live context restores the cursor however this ends (stop, cancellation, an error).
    """
    console = console if console is not None else Console()
    plain = wants_plain(console) if plain is None else plain
    clock = asyncio.get_running_loop().time
    began = clock()
    deadline = None if duration is None else began + duration

    async def sample() -> None:
        market, pipeline = await asyncio.gather(read_market(redis), stats())
        view.update(market, pipeline)

    await sample()  # the first sample: rates need two
    with contextlib.ExitStack() as stack:
        live = None
        if not plain:
            live = stack.enter_context(Live(view.render(console.width), console=console, auto_refresh=False))
        next_at = began
        while not stop.is_set() and (deadline is None or clock() < deadline):
            next_at = max(next_at + view.refresh, clock())  # a fixed grid: no drift, no catching up
            wake = next_at if deadline is None else min(next_at, deadline)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, wake - clock()))
            if stop.is_set():
                break
            await sample()
            if live is not None:
                live.update(view.render(console.width), refresh=True)
            else:
                stream = out if out is not None else sys.stdout
                stream.write("\n" + "\n".join(view.plain_lines()) + "\n")
                stream.flush()


async def run_top(args: argparse.Namespace) -> int:
    """`python -m enricher top`: the view of a running daemon, from its Redis and its /metrics."""
    if not args.refresh > 0 or (args.duration is not None and args.duration < 0):
        print("enricher top: --refresh must be positive and --duration not negative", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
            loop.add_signal_handler(signum, stop.set)
    redis = Redis.from_url(args.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    view = LiveView(refresh=args.refresh)
    stats = functools.partial(scrape_stats, args.metrics_url, min(2.0, max(0.2, args.refresh)))
    try:
        await run_view(view, redis, stats, stop, duration=args.duration, plain=True if args.plain else None)
    finally:
        await redis.aclose()
        for signum in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
    return 0
