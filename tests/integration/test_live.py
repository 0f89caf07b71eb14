"""The live view (`enricher.live`): its screen, its plain lines, and `top` against a real /metrics."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis
from rich.console import Console

from enricher.__main__ import build_parser
from enricher.app import Enricher
from enricher.health import HealthServer
from enricher.live import LiveView, run_top, run_view, sparkline, wants_plain
from enricher.live_data import (
    PipelineStats,
    bucket_quantile,
    parse_metrics,
    read_market,
    scrape_stats,
    stats_from_app,
)
from enricher.metrics import PROCESSED, RECEIVED
from enricher.records import CHANNELS, OPTION_CHAIN, UNDERLYING
from tests.conftest import sample, wait_for
from tests.integration.helpers import publish, with_fields

StartApp = Callable[..., Awaitable[Enricher]]
ROOT = Path(__file__).resolve().parents[2]
SPOT = "21503.45"


def expected_chain_figures() -> tuple[str, str]:
    """PCR OI (as the screen writes it) and max pain, from the sample chain itself (CONTRACT §4)."""
    chain = orjson.loads(sample("synthetic_option_chain.json"))
    call_oi: dict[float, int] = {c["strike"]: c["open_interest"] for c in chain["calls"]}
    put_oi: dict[float, int] = {p["strike"]: p["open_interest"] for p in chain["puts"]}
    pcr = sum(put_oi.values()) / sum(call_oi.values())

    def pain(s: float) -> float:
        calls = sum(oi * max(0.0, s - k) for k, oi in call_oi.items())
        return calls + sum(oi * max(0.0, k - s) for k, oi in put_oi.items())

    max_pain = min(sorted(chain["strikes"]), key=pain)
    return f"{round(pcr, 4):.3f}", f"{max_pain:.0f}"


def tick(tick_id: int, price: float, at: str) -> bytes:
    """The sample tick, later (same minute: same 1m candle) and at another price."""
    return with_fields(
        sample("synthetic_underlying.json"), tick_id=tick_id, price=price, timestamp=f"2025-01-20T{at}.000000"
    )


async def app_with_sample_data(start_app: StartApp, redis: Redis) -> Enricher:
    app = await start_app()
    await publish(redis, UNDERLYING, sample("synthetic_underlying.json"))
    await publish(redis, OPTION_CHAIN, sample("synthetic_option_chain.json"))
    await wait_for(lambda: app.metrics.messages.get((UNDERLYING, PROCESSED)) == 1, what="tick processed")
    await wait_for(lambda: app.metrics.messages.get((OPTION_CHAIN, PROCESSED)) == 1, what="chain processed")
    return app


def screen(view: LiveView) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(view.render())
    return console.export_text()


async def test_the_screen_shows_products_and_the_pipeline(start_app: StartApp, redis: Redis) -> None:
    app = await app_with_sample_data(start_app, redis)
    view = LiveView()
    view.update(await read_market(redis), stats_from_app(app))
    await publish(redis, UNDERLYING, tick(124, 21510.0, "10:15:31"))
    await wait_for(lambda: app.metrics.messages.get((UNDERLYING, PROCESSED)) == 2, what="second tick processed")
    view.update(await read_market(redis), stats_from_app(app))

    text = screen(view)
    pcr, max_pain = expected_chain_figures()
    row = next(line for line in text.splitlines() if line.lstrip().startswith("NIFTY"))
    assert "21510.00" in row
    assert "+0.03%" in row  # change since the first price the view saw, 21503.45
    assert pcr in row
    assert f" {max_pain} " in row
    assert re.search(r"▁+█", row), row  # the sparkline: 21503.45, then 21510.00
    first = f"{float(SPOT):.1f}"
    assert f"1m {first}/21510.0/{first}/21510.0 ·2" in row  # o/h/l/c and the tick count
    assert "2025-01-23" in text  # the chain's expiry, under the product
    capacity = app.queues[UNDERLYING].capacity
    for channel in CHANNELS:
        line = next(line for line in text.splitlines() if line.lstrip().startswith(channel))
        assert f" 0/{capacity:,} " in line, line  # queue depth / capacity
    underlying = next(line for line in text.splitlines() if line.lstrip().startswith(UNDERLYING))
    assert underlying.split()[2] == "2"  # processed
    assert "dead letters 0" in text


async def test_the_first_screen_before_any_rate_and_with_the_spot(start_app: StartApp, redis: Redis) -> None:
    app = await app_with_sample_data(start_app, redis)
    view = LiveView()
    view.update(await read_market(redis), stats_from_app(app))
    text = screen(view)
    assert "NIFTY" in text
    assert SPOT in text
    assert "waiting for a second sample" in text
    lines, span = view.lines()
    assert span == 0.0
    assert all(line.rate is None for line in lines)


async def test_plain_lines_when_piped(start_app: StartApp, redis: Redis) -> None:
    app = await app_with_sample_data(start_app, redis)
    out = io.StringIO()

    async def stats() -> PipelineStats:
        return stats_from_app(app)

    console = Console(file=io.StringIO())  # not a terminal
    assert wants_plain(console)
    await run_view(LiveView(refresh=0.05), redis, stats, asyncio.Event(), duration=0.2, console=console, out=out)
    text = out.getvalue()
    pcr, max_pain = expected_chain_figures()
    # The line the demo test greps for: spot, then ... the 1m candle and its tick count.
    rows = re.findall(rf"^NIFTY\s+{re.escape(SPOT)}\s.*/.*, 1$", text, re.MULTILINE)
    assert rows, text
    assert f"pcr {pcr}/" in rows[-1]
    assert f"max pain {max_pain} " in rows[-1]
    assert re.search(r"^\[\s*\d+ s\] in \(\d+ s\): ticks \d+\.\d/s, quotes", text, re.MULTILINE), text
    summaries = [line for line in text.splitlines() if line.startswith("[")]
    assert len(summaries) == 4  # at 0.05, 0.10, 0.15 and 0.20 s
    assert all(f"0/{app.queues[UNDERLYING].capacity:,}" in line for line in summaries)


async def test_live_mode_draws_in_place_and_stops_on_the_event(start_app: StartApp, redis: Redis) -> None:
    app = await app_with_sample_data(start_app, redis)
    stop = asyncio.Event()
    refreshes = 0

    async def stats() -> PipelineStats:
        nonlocal refreshes
        refreshes += 1
        if refreshes == 3:
            stop.set()  # as the SIGINT / SIGTERM handler does
        return stats_from_app(app)

    console = Console(record=True, width=160, file=io.StringIO(), force_terminal=True)
    assert not wants_plain(console)
    await asyncio.wait_for(run_view(LiveView(refresh=0.05), redis, stats, stop, console=console), 10)
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[?25l" in raw  # Live hid the cursor ...
    assert raw.rstrip().endswith("\x1b[?25h")  # ... and showed it again on the way out
    assert "\x1b[2K" in raw  # and redrew over the previous frame
    assert SPOT in console.export_text()


def test_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    assert wants_plain(Console(file=io.StringIO(), force_terminal=True))


async def test_top_reads_a_daemons_metrics(
    start_app: StartApp, redis: Redis, redis_base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await app_with_sample_data(start_app, redis)
    async with HealthServer(app, port=0, host="127.0.0.1", histograms=app.metrics.histograms) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        first = await scrape_stats(url)
        assert first.error is None
        assert first.messages[UNDERLYING, RECEIVED] == 1
        assert first.messages[OPTION_CHAIN, PROCESSED] == 1
        assert first.capacity[UNDERLYING] == app.queues[UNDERLYING].capacity
        assert first.depth[UNDERLYING] == 0
        assert first.latency[UNDERLYING][-1] == (float("inf"), 1.0)  # one tick observed
        assert first.dead_letters == 0
        assert first.reconnects == 0
        assert first.started_at == app.metrics.started_at

        ticks = [tick(200 + i, 21500.0 + i, f"10:15:4{i}") for i in range(5)]
        await publish(redis, UNDERLYING, *ticks)
        await wait_for(lambda: app.metrics.messages.get((UNDERLYING, PROCESSED)) == 6, what="five more ticks")
        second = await scrape_stats(url)
        view = LiveView()
        view.update(await read_market(redis), first)
        view.update(await read_market(redis), second)
        lines, span = view.lines()
        ticks_line = next(line for line in lines if line.channel == UNDERLYING)
        assert ticks_line.rate == pytest.approx(5 / span)
        assert ticks_line.p50 is not None
        assert ticks_line.processed == 6
        text = screen(view)
        assert url in text
        assert re.search(rf"{UNDERLYING}\s+[\d.]+\s+6\s", text), text

        # The command itself, piped: --plain lines from Redis and the scrape.
        args = build_parser().parse_args(
            ["top", "--redis-url", redis_base_url, "--metrics-url", url, "--refresh", "0.05", "--duration", "0.15"]
        )
        assert args.plain is False  # plain all the same: stdout is captured, not a terminal
        capsys.readouterr()
        assert await run_top(args) == 0
        out = capsys.readouterr().out
        assert re.search(r"^NIFTY\s+21504\.00\s.*, 6$", out, re.MULTILINE), out
        assert "processed 7" in out  # 6 ticks and a chain


async def test_top_shows_an_unreachable_daemon_and_carries_on() -> None:
    stats = await scrape_stats("http://user:secret@127.0.0.1:9/metrics", timeout=1.0)
    assert stats.error is not None
    assert stats.source == "http://user:***@127.0.0.1:9/metrics"
    nowhere = Redis.from_url("redis://127.0.0.1:9/0")
    market = await read_market(nowhere)
    await nowhere.aclose()
    assert market.error is not None
    view = LiveView()
    view.update(market, stats)
    text = screen(view)
    assert "metrics: " in text
    assert "redis: " in text
    assert "no latest:underlying:* keys yet" in text


def test_parse_metrics_and_bucket_quantiles() -> None:
    text = "\n".join(
        [
            "# TYPE enricher_messages_total counter",
            'enricher_messages_total{channel="market:underlying",outcome="received"} 10.0',
            "# TYPE enricher_queue_depth gauge",
            'enricher_queue_depth{channel="market:underlying"} 3.0',
            "# TYPE enricher_processing_seconds histogram",
            'enricher_processing_seconds_bucket{channel="market:underlying",le="0.001"} 4.0',
            'enricher_processing_seconds_bucket{channel="market:underlying",le="0.01"} 8.0',
            'enricher_processing_seconds_bucket{channel="market:underlying",le="+Inf"} 10.0',
            'enricher_processing_seconds_count{channel="market:underlying"} 10.0',
            'enricher_processing_seconds_sum{channel="market:underlying"} 0.5',
            "# TYPE enricher_dead_letters_total counter",
            "enricher_dead_letters_total 2.0",
            "# TYPE enricher_dlq_length gauge",
            "enricher_dlq_length 7.0",
            "",
        ]
    )
    stats = parse_metrics(text, "test", at=1.0)
    assert stats.messages == {(UNDERLYING, RECEIVED): 10.0}
    assert stats.depth == {UNDERLYING: 3.0}
    assert (stats.dead_letters, stats.dlq_length, stats.reconnects) == (2.0, 7.0, None)
    buckets = stats.latency[UNDERLYING]
    assert bucket_quantile(buckets, 0.2) == pytest.approx(0.0005)  # rank 2 of 4 in [0, 1 ms]
    assert bucket_quantile(buckets, 0.6) == pytest.approx(0.001 + 0.009 * 0.5)
    assert bucket_quantile(buckets, 0.99) == pytest.approx(0.01)  # in +Inf: the top finite bound
    assert bucket_quantile(((float("inf"), 0.0),), 0.5) is None


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([5.0, 5.0]) == "▄▄"
    assert sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([10.0, 20.0, 15.0]) == "▁█▅"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_top_in_a_real_terminal(start_app: StartApp, redis: Redis, redis_base_url: str, tmp_path: Path) -> None:
    app = await app_with_sample_data(start_app, redis)
    socket = f"enricher-test-{uuid.uuid4().hex[:8]}"  # a private tmux server, killed at the end
    config = tmp_path / "tmux.conf"
    config.write_text("set -g remain-on-exit on\n")  # keep the pane, and its screen, once top exits

    async def tmux(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "tmux", "-L", socket, "-f", str(config), *args, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        assert process.returncode == 0, args
        return out.decode()

    async with HealthServer(app, port=0, host="127.0.0.1", histograms=app.metrics.histograms) as server:
        command = (  # COLUMNS, if the test's environment has it, would override the pane's width
            f"cd {ROOT} && env -u COLUMNS -u LINES {sys.executable} -m enricher top --redis-url {redis_base_url}"
            f" --metrics-url http://127.0.0.1:{server.port}/metrics --refresh 0.5 --duration 2; echo top exited $?"
        )
        try:
            await tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "50", command)

            async def exited() -> bool:
                return (await tmux("display-message", "-p", "-t", "top", "#{pane_dead}")).strip() == "1"

            await wait_for(exited, timeout=30, what="top to exit after --duration")
            text = await tmux("capture-pane", "-p", "-S", "-", "-t", "top")  # with any scrolled-off lines
        finally:
            await tmux("kill-server")
    assert "top exited 0" in text, text
    pcr, max_pain = expected_chain_figures()
    rows = [line for line in text.splitlines() if line.lstrip().startswith("NIFTY")]
    assert rows, text
    row = rows[0]
    assert SPOT in row
    assert pcr in row
    assert max_pain in row
    assert "enricher live" in text, text
    assert re.search(rf"{UNDERLYING}\s+0\.0\s+1\s", text), text  # in/s, then processed
    assert text.count("enricher live") == 1  # redrawn in place, not scrolled
