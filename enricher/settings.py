"""The one frozen Settings object, read once at the edge from the environment and CLI flags.

Each field carries its environment variable and help text, so `run --help`, the README
table and the parser cannot drift apart (a test checks the README against `FIELDS`).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from enricher.records import OPTION_CHAIN, OPTION_QUOTE, UNDERLYING
from enricher.redact import redact_url

OVERFLOW_POLICIES: Final = ("spill", "conflate", "deadletter", "drop_newest", "drop_oldest")
SOURCES: Final = ("pubsub", "streams")


def _setting(default: Any, env: str, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "choices": choices})


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = _setting("redis://localhost:6379/0", "REDIS_URL", "Redis for input, cache and publishes")
    mongo_url: str = _setting("mongodb://localhost:27017", "MONGO_URL", "MongoDB to persist to")
    mongo_db: str = _setting("deltastream", "ENRICHER_MONGO_DB", "MongoDB database name")
    persist: bool = _setting(True, "ENRICHER_PERSIST", "write to MongoDB; false = cache and publish only")
    feed_tz: str = _setting("UTC", "ENRICHER_FEED_TZ", "timezone of naive feed timestamps (IANA name)")
    workers: int = _setting(2, "ENRICHER_WORKERS", "coroutine workers per channel")
    queue_size: int = _setting(20000, "ENRICHER_QUEUE_SIZE", "capacity of each channel's queue")
    overflow_underlying: str = _setting(
        "spill", "ENRICHER_OVERFLOW_UNDERLYING", "full-queue policy for ticks", OVERFLOW_POLICIES
    )
    overflow_quote: str = _setting(
        "spill", "ENRICHER_OVERFLOW_QUOTE", "full-queue policy for quotes", OVERFLOW_POLICIES
    )
    overflow_chain: str = _setting(
        "spill", "ENRICHER_OVERFLOW_CHAIN", "full-queue policy for chains", OVERFLOW_POLICIES
    )
    batch_max: int = _setting(500, "ENRICHER_BATCH_MAX", "most messages a worker takes at once")
    batch_max_bytes: int = _setting(
        1 << 20, "ENRICHER_BATCH_MAX_BYTES", "a worker stops taking messages once their payloads reach this"
    )
    source: str = _setting(
        "pubsub", "ENRICHER_SOURCE", "input: pub/sub channels, or Redis Streams in a consumer group", SOURCES
    )
    stream_prefix: str = _setting(
        "stream:", "ENRICHER_STREAM_PREFIX", "streams are {prefix}{channel}:{partition} (stream:market:underlying:3)"
    )
    stream_partitions: int = _setting(
        16, "ENRICHER_STREAM_PARTITIONS", "partitions per channel by product hash; producers must agree"
    )
    stream_group: str = _setting("enricher", "ENRICHER_STREAM_GROUP", "the consumer group every instance joins")
    consumer: str = _setting("", "ENRICHER_CONSUMER", "this instance's consumer name (default: host name and pid)")
    stream_claim_idle: float = _setting(
        30.0, "ENRICHER_STREAM_CLAIM_IDLE", "seconds a pending entry sits idle before another consumer claims it"
    )
    stream_lease_ttl: float = _setting(
        10.0, "ENRICHER_STREAM_LEASE_TTL", "seconds a dead instance keeps its partitions before others take them"
    )
    stream_maxlen: int = _setting(
        1000000, "ENRICHER_STREAM_MAXLEN", "producers (bridge, feed) cap each stream at about this many entries"
    )
    stream_trim: bool = _setting(
        True, "ENRICHER_STREAM_TRIM", "delete entries once every earlier one is acknowledged (XTRIM MINID)"
    )
    restore_state: bool = _setting(
        True, "ENRICHER_RESTORE_STATE", "load a product's candles, chains and spot from Redis when first seen"
    )
    pool_workers: int = _setting(1, "ENRICHER_POOL_WORKERS", "analytics processes; 0 = inline")
    pool_min_strikes: int = _setting(
        2000, "ENRICHER_POOL_MIN_STRIKES", "chain batches with fewer strikes in all run inline"
    )
    warm_up: int = _setting(
        12, "ENRICHER_WARM_UP", "synthetic feed seconds analysed at start-up to warm the code; 0 = off"
    )
    flush_interval: float = _setting(0.05, "ENRICHER_FLUSH_INTERVAL", "seconds a MongoDB write may wait")
    live_first: float = _setting(
        0.05,
        "ENRICHER_LIVE_FIRST",
        "most seconds a chain batch waits for ticks, a quote batch or MongoDB write for both; 0 = off",
    )
    flush_max_docs: int = _setting(1000, "ENRICHER_FLUSH_MAX_DOCS", "documents per insert_many")
    mongo_concurrency: int = _setting(
        1, "ENRICHER_MONGO_CONCURRENCY", "insert_many calls in flight at once (1 suits a single node)"
    )
    store_buffer_max: int = _setting(
        200000, "ENRICHER_STORE_BUFFER_MAX", "documents held while MongoDB is down; then dead-lettered"
    )
    store_buffer_max_bytes: int = _setting(
        256 << 20,
        "ENRICHER_STORE_BUFFER_MAX_BYTES",
        "bytes of BSON and raw payloads held while MongoDB is down; then dead-lettered",
    )
    store_backpressure_bytes: int = _setting(
        16 << 20,
        "ENRICHER_STORE_BACKPRESSURE_BYTES",
        "chain and quote batches wait while the MongoDB writer holds more than this and is writing; 0 = off",
    )
    retry_attempts: int = _setting(8, "ENRICHER_RETRY_ATTEMPTS", "tries for a transient error, then DLQ")
    retry_base: float = _setting(0.05, "ENRICHER_RETRY_BASE", "first backoff ceiling, seconds")
    retry_cap: float = _setting(5.0, "ENRICHER_RETRY_CAP", "largest backoff, seconds")
    cache_ttl: int = _setting(300, "ENRICHER_CACHE_TTL", "seconds the latest:* keys live")
    idem_inflight_ttl: float = _setting(
        30.0, "ENRICHER_IDEM_INFLIGHT_TTL", "seconds an in-progress mark holds off a redelivery"
    )
    idem_done_ttl: int = _setting(3600, "ENRICHER_IDEM_DONE_TTL", "seconds a done mark filters duplicates")
    gap_tick_counter: bool = _setting(
        True, "ENRICHER_GAP_TICK_COUNTER", "tick_id is the feed's shared counter: log its gaps (pub/sub source only)"
    )
    gap_max_silence: float = _setting(
        10.0, "ENRICHER_GAP_MAX_SILENCE", "event-time seconds without a product's tick that count as a gap"
    )
    risk_free_rate: float = _setting(0.0, "ENRICHER_RISK_FREE_RATE", "r for the forward and Black-76, continuous")
    lot_sizes: str = _setting(
        "", "ENRICHER_LOT_SIZES", "GEX contract multipliers, e.g. NIFTY=75,SPY=100 (built-in NSE lots; else 100)"
    )
    exchange_closes: str = _setting(
        "",
        "ENRICHER_EXCHANGE_CLOSES",
        "expiry close per product, e.g. NIFTY=15:30@Asia/Kolkata (NSE default; else 16:00@America/New_York)",
    )
    gex_sign: int = _setting(1, "ENRICHER_GEX_SIGN", "+1: dealers long calls, short puts; -1: the reverse")
    surface_interval: float = _setting(
        0.1, "ENRICHER_SURFACE_INTERVAL", "least seconds between two writes of the changed surfaces' keys; 0 = no wait"
    )
    surface_snapshot_interval: float = _setting(
        60.0, "ENRICHER_SURFACE_SNAPSHOT_INTERVAL", "seconds between surface snapshots in MongoDB per product"
    )
    iv_surface_max: int = _setting(2000, "ENRICHER_IV_SURFACE_MAX", "most members of iv_surface:{product}")
    dlq_max: int = _setting(100000, "ENRICHER_DLQ_MAX", "most records kept in dlq:enrichment")
    max_message_bytes: int = _setting(1 << 20, "ENRICHER_MAX_MESSAGE_BYTES", "larger payloads are rejected")
    max_strikes: int = _setting(2000, "ENRICHER_MAX_STRIKES", "chains with more strikes are rejected")
    mongo_timeout: float = _setting(5.0, "ENRICHER_MONGO_TIMEOUT", "seconds to find a MongoDB server")
    mongo_op_timeout: float = _setting(
        30.0, "ENRICHER_MONGO_OP_TIMEOUT", "seconds one MongoDB operation may take, then it is retried"
    )
    grace_period: float = _setting(10.0, "ENRICHER_GRACE_PERIOD", "seconds to drain and flush at shutdown")
    http_port: int = _setting(9108, "ENRICHER_HTTP_PORT", "port of /metrics, /healthz and /readyz; 0 = off")
    log_level: str = _setting("info", "ENRICHER_LOG_LEVEL", "log level", ("debug", "info", "warning", "error"))
    log_format: str = _setting("auto", "ENRICHER_LOG_FORMAT", "auto, json or console", ("auto", "json", "console"))

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            choices = spec.metadata["choices"]
            if choices and getattr(self, spec.name) not in choices:
                raise ValueError(f"{spec.name} must be one of {', '.join(choices)}")
        positive = (
            "workers", "queue_size", "batch_max", "batch_max_bytes", "flush_max_docs", "cache_ttl", "idem_done_ttl",
            "retry_attempts", "store_buffer_max", "store_buffer_max_bytes", "dlq_max", "mongo_concurrency",
            "stream_partitions", "stream_maxlen",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.stream_claim_idle <= 0 or self.stream_lease_ttl <= 0:
            raise ValueError("stream_claim_idle and stream_lease_ttl must be positive")
        if not self.live_first >= 0.0:
            raise ValueError("live_first must be 0 (off) or more")
        if self.store_backpressure_bytes < 0:
            raise ValueError("store_backpressure_bytes must be 0 (off) or more")
        if self.pool_workers < 0:
            raise ValueError("pool_workers must be 0 (inline) or more")
        if self.warm_up < 0:
            raise ValueError("warm_up must be 0 (off) or more")
        if not self.surface_interval >= 0.0:
            raise ValueError("surface_interval must be 0 or more")
        if self.gex_sign not in (1, -1):
            raise ValueError("gex_sign must be 1 or -1")
        try:
            self.parsed_lot_sizes()
            for hour, minute, zone in self.parsed_closes().values():
                if not (0 <= hour < 24 and 0 <= minute < 60):
                    raise ValueError(f"exchange close {hour}:{minute} is not a time of day")
                ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"model settings: {exc}") from exc
        try:
            ZoneInfo(self.feed_tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"feed_tz: unknown timezone {self.feed_tz!r}") from exc

    def parsed_lot_sizes(self) -> dict[str, float]:
        return {product: float(size) for product, size in _pairs(self.lot_sizes, "ENRICHER_LOT_SIZES")}

    def parsed_closes(self) -> dict[str, tuple[int, int, str]]:
        closes = {}
        for product, text in _pairs(self.exchange_closes, "ENRICHER_EXCHANGE_CLOSES"):
            clock, _, zone = text.partition("@")
            hour, _, minute = clock.partition(":")
            closes[product] = (int(hour), int(minute or 0), zone or "UTC")
        return closes

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.feed_tz)

    def overflow(self, channel: str) -> str:
        policies = {
            UNDERLYING: self.overflow_underlying,
            OPTION_QUOTE: self.overflow_quote,
            OPTION_CHAIN: self.overflow_chain,
        }
        return policies[channel]

    def redacted(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["redis_url"] = redact_url(self.redis_url)
        values["mongo_url"] = redact_url(self.mongo_url)
        return values


def _pairs(text: str, env: str) -> list[tuple[str, str]]:
    pairs = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        product, sep, value = part.partition("=")
        if not sep or not product or not value:
            raise ValueError(f"{env}: expected PRODUCT=VALUE pairs, got {part!r}")
        pairs.append((product.strip(), value.strip()))
    return pairs


FIELDS: Final = dataclasses.fields(Settings)


def _convert(spec: dataclasses.Field[Any], text: str) -> Any:
    kind: type[Any] = type(spec.default)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{spec.metadata['env']}: expected true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError as exc:
        raise ValueError(f"{spec.metadata['env']}: expected {kind.__name__}, got {text!r}") from exc


def flag(spec: dataclasses.Field[Any]) -> str:
    return "--" + spec.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; the default shown is the built-in one, the env var overrides it."""
    for spec in FIELDS:
        env, text = spec.metadata["env"], spec.metadata["help"]
        parser.add_argument(
            flag(spec),
            dest=spec.name,
            default=None,
            metavar=type(spec.default).__name__.upper(),
            choices=spec.metadata["choices"],
            help=f"{text} (env {env}, default {spec.default})",
        )


def load(environ: Mapping[str, str], args: argparse.Namespace | None = None, **overrides: Any) -> Settings:
    """Defaults < environment < CLI flags < keyword overrides (tests, demo)."""
    values: dict[str, Any] = {}
    for spec in FIELDS:
        env = spec.metadata["env"]
        given = getattr(args, spec.name, None) if args is not None else None
        if given is not None:
            values[spec.name] = _convert(spec, str(given))
        elif env in environ:
            values[spec.name] = _convert(spec, environ[env])
    values.update(overrides)
    return Settings(**values)


ENV_HEADER: Final = """\
# enricher settings, one KEY=VALUE a line, for systemd's EnvironmentFile= (deploy/enricher.service)
# or compose's env_file:. Copy to /etc/enricher/enricher.env (mode 0600: the URLs may hold
# credentials). Every line below shows the built-in default; uncomment the ones you change.
# `python -m enricher run --help` lists the same settings as flags; flags win over these.
# Generated by `python -m enricher settings --env`.
"""


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def env_example() -> str:
    blocks = [f"# {spec.metadata['help']}\n#{spec.metadata['env']}={_shown(spec.default)}\n" for spec in FIELDS]
    return ENV_HEADER + "\n" + "\n".join(blocks)


def markdown_table() -> str:
    rows = ["| env var | flag | default | meaning |", "|---|---|---|---|"]
    for spec in FIELDS:
        choices = spec.metadata["choices"]
        meaning = spec.metadata["help"] + (f" ({' / '.join(choices)})" if choices else "")
        rows.append(f"| `{spec.metadata['env']}` | `{flag(spec)}` | `{_shown(spec.default)}` | {meaning} |")
    return "\n".join(rows) + "\n"
