"""Command line: `python -m enricher {run,bridge,check,dlq,top,feed,demo,settings}`. Argument parsing only."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from enricher import __version__, logs, settings
from enricher.dlq import add_dlq_arguments
from enricher.loop import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enricher", description="Real-time options analytics for DeltaStream.")
    parser.add_argument("--version", action="version", version=f"enricher {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the daemon",
        description="Consume the market:* channels and write every output of CONTRACT.md. "
        "Each setting is a flag, or an environment variable; flags win.",
    )
    settings.add_arguments(run)

    check = commands.add_parser(
        "check",
        help="check Redis and MongoDB with the configured settings; exit 1 on any failure",
        description="One line per check: versions, permissions, indexes, subscriptions. "
        "Run it first, or as a HEALTHCHECK / systemd ExecStartPre.",
    )
    settings.add_arguments(check)

    dlq = commands.add_parser(
        "dlq",
        help="list, count, replay or purge the dead letters in dlq:enrichment",
        description="Settings flags go before the subcommand, e.g. `enricher dlq --redis-url URL list`.",
    )
    settings.add_arguments(dlq)
    add_dlq_arguments(dlq)

    bridge = commands.add_parser(
        "bridge",
        help="copy the pub/sub channels into the partitioned Redis Streams, for the streams source",
        description="Subscribes to market:* and XADDs each message to {prefix}{channel}:{partition}. "
        "Uses REDIS_URL and the ENRICHER_STREAM_* settings.",
    )
    settings.add_arguments(bridge)

    feed = commands.add_parser("feed", help="publish the synthetic DeltaStream feed")
    feed.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    feed.add_argument("--rate", type=float, default=1.0, help="feed loops per second (1 = the real feed's pace)")
    feed.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    feed.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="N",
        help="send N ticks, 6N quotes and N/5 chains as fast as possible, then exit",
    )
    feed.add_argument("--strikes", type=int, default=21, help="strikes per chain in --burst")
    feed.add_argument("--seed", type=int, default=0)
    feed.add_argument(
        "--streams",
        action="store_true",
        help="XADD to the partitioned streams instead of PUBLISH (ENRICHER_STREAM_PREFIX/_PARTITIONS/_MAXLEN)",
    )
    feed.add_argument(
        "--tz",
        default=os.environ.get("ENRICHER_FEED_TZ", "UTC"),
        help="timezone of the naive timestamps the feed writes",
    )

    shown = commands.add_parser("settings", help="print every setting as an env file or a Markdown table")
    shown.add_argument("--markdown", action="store_true", help="a Markdown table (as in the README)")

    demo = commands.add_parser("demo", help="the whole pipeline on embedded servers with the built-in feed")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=1.0, help="feed loops per second")
    demo.add_argument("--every", type=float, default=1.0, help="seconds between refreshes of the live view")

    top = commands.add_parser(
        "top",
        help="a live view of a running daemon: products from its Redis, the pipeline from its /metrics",
        description="Redraws in place in a terminal; prints plain lines when piped, with TERM=dumb, or --plain.",
    )
    top.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    top.add_argument("--metrics-url", default="http://localhost:9108/metrics", help="the daemon's /metrics")
    top.add_argument("--refresh", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    top.add_argument("--plain", action="store_true", help="plain text lines, even in a terminal")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "check", "dlq", "bridge"):
        try:
            config = settings.load(os.environ, args)
        except ValueError as exc:
            print(f"enricher: bad setting: {exc}", file=sys.stderr)
            return 2
        if args.command == "dlq":
            logs.configure("warning", config.log_format)
            from enricher.dlq import main_dlq

            return run(main_dlq(config, args))
        if args.command == "check":
            logs.configure("warning", config.log_format)
            from enricher.check import main_check

            return run(main_check(config))
        logs.configure(config.log_level, config.log_format)
        if args.command == "bridge":
            from enricher.bridge import run_bridge

            return run(run_bridge(config))
        from enricher.app import serve

        return run(serve(config))
    if args.command == "settings":
        print(settings.markdown_table() if args.markdown else settings.env_example(), end="")
        return 0
    if args.command == "feed":
        from enricher.feed.cli import run_feed

        logs.configure("info")
        return run(run_feed(args))
    if args.command == "top":
        from enricher.live import run_top

        logs.configure("warning")
        return run(run_top(args))
    from enricher.demo import run_demo

    logs.configure("warning")
    return run(run_demo(args))


if __name__ == "__main__":
    sys.exit(main())
