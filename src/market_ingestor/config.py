"""Configuration: one TOML file plus environment overrides, decoded and validated once at start, frozen.

Where the values come from, later ones winning:

1. the defaults below;
2. the TOML file: ``--config PATH``, else ``$MARKET_INGESTOR_CONFIG``, else ``./market-ingestor.toml`` if present;
3. the well-known variables ``KAFKA_BOOTSTRAP``, ``NATS_URL``, ``DATABASE_URL`` (what container platforms set);
4. ``MARKET_INGESTOR__SECTION__FIELD=value`` for any field, ``__`` separating the path, e.g.
   ``MARKET_INGESTOR__BUS__KIND=nats`` or ``MARKET_INGESTOR__EXCHANGES__BINANCE__SYMBOLS='["BTCUSDT"]'``
   (values starting with ``[`` or ``{`` are read as JSON).

A wrong value fails at start with a :class:`ConfigError` naming the field path and what was expected;
unknown fields are errors too, so a typo never silently becomes a default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import msgspec

from market_ingestor.errors import ConfigError
from market_ingestor.indicators import DEFAULT_SPECS, IndicatorSpecError, parse_spec
from market_ingestor.windows import parse_intervals

ENV_PREFIX = "MARKET_INGESTOR__"
CONFIG_PATH_ENV = "MARKET_INGESTOR_CONFIG"
DEFAULT_CONFIG_FILE = "market-ingestor.toml"

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
PortNumber = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: any free port (tests)


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class LogConfig(_Section, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "kv"] = "json"


class KafkaConfig(_Section, frozen=True):
    bootstrap: str = "127.0.0.1:19092"
    client_id: str = "market-ingestor"
    # acks=all with idempotence: a broker failover neither loses nor duplicates a produced batch.
    acks: Literal["all", "1"] = "all"
    linger_ms: NonNegativeInt = 5
    batch_size_bytes: PositiveInt = 512 * 1024
    max_request_size_bytes: PositiveInt = 4 * 1024 * 1024
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    request_timeout_ms: PositiveInt = 30_000
    # A consumer that stops heartbeating for this long is dropped from its group and its partitions move.
    session_timeout_ms: PositiveInt = 10_000
    partitions: PositiveInt = 12
    replication_factor: PositiveInt = 1


class NatsConfig(_Section, frozen=True):
    url: str = "nats://127.0.0.1:14222"
    connect_timeout_s: PositiveSeconds = 10.0
    storage: Literal["file", "memory"] = "file"
    replicas: PositiveInt = 1
    max_age_s: PositiveInt = 7 * 24 * 3600
    # JetStream drops a publish whose Nats-Msg-Id it has seen within this window.
    duplicate_window_s: PositiveInt = 120
    # An unacknowledged message is redelivered after this long.
    ack_wait_s: PositiveSeconds = 30.0
    # Publishes without an ack of their own, kept for a re-send until an ack confirms them.
    max_pending_publishes: PositiveInt = 16_384
    ack_every: PositiveInt = 512  # every n-th publish of a topic asks JetStream for an ack
    # An ack waited for this long is asked again (the window re-sent); while NATS is away a publisher waits and
    # re-sends for as long as it takes, except at stop, which waits at most this long (then: lost, logged).
    ack_timeout_s: PositiveSeconds = 10.0
    # The stream worker on NATS (docs/nats-worker.md): instruments are split into this many shards, shared out
    # among the running workers; keep it fixed for a deployment (as Kafka's partition count), >= the workers.
    worker_shards: Annotated[int, msgspec.Meta(gt=0, le=1024)] = 12
    # A worker that stops renewing its shard leases (killed, paused) loses them after this long.
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=1.0, le=300.0)] = 10.0  # float-ok: seconds


class BatchConfig(_Section, frozen=True):
    """Batch records on the hot topics (``bus/records.py``, docs/topics.md): a record holds up to ``max_events``
    events and ``max_bytes`` of value; a partial one goes out after ``linger_ms``."""

    max_events: Annotated[int, msgspec.Meta(gt=0, le=100_000)] = 1_000
    # Well under Kafka's default message.max.bytes (1 MB) and NATS' default max_payload (1 MB).
    max_bytes: Annotated[int, msgspec.Meta(ge=1024, le=900 * 1024)] = 256 * 1024
    linger_ms: NonNegativeInt = 5


class BusConfig(_Section, frozen=True):
    kind: Literal["kafka", "nats"] = "kafka"
    # Prepended to every topic name ("staging." -> "staging.market.trades"): several pipelines on one cluster.
    topic_prefix: Annotated[str, msgspec.Meta(pattern=r"^([a-z0-9_-]+\.)?$")] = ""
    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)


class DatabaseConfig(_Section, frozen=True):
    url: str = "postgresql://market_ingestor@127.0.0.1:15432/market_ingestor"


class StorageConfig(_Section, frozen=True):
    """The PostgreSQL/TimescaleDB tables (``sinks/``): partitioning, retention, what to store."""

    # Chosen once per database at its first migration (and recorded there): "auto" takes TimescaleDB when the
    # server preloads it, else partitions (warning when the extension is there but not preloaded);
    # "timescaledb" fails instead of falling back; "postgres" never uses the extension.
    mode: Literal["auto", "timescaledb", "postgres"] = "auto"
    partition_interval_days: PositiveInt = 1  # plain PostgreSQL: range partitions; TimescaleDB: chunk interval
    partitions_ahead_days: NonNegativeInt = 3  # plain PostgreSQL: partitions created this far ahead of today
    retention_days: NonNegativeInt = 0  # trades and quotes older than this are dropped by partition; 0 = keep
    kline_retention_days: NonNegativeInt = 0  # the same for klines and indicator values; 0 = keep
    compression_after_days: NonNegativeInt = 7  # TimescaleDB only: compress chunks this old; 0 = never
    store_quotes: bool = False  # best bid/ask into market_quotes (high volume)
    migrate_on_start: bool = True  # services apply pending migrations when they start
    pool_min_size: PositiveInt = 1
    pool_max_size: PositiveInt = 4


class ExchangeConfig(_Section, frozen=True):
    enabled: bool = True
    symbols: list[str] = msgspec.field(default_factory=list)
    ws_url: str | None = None  # None: the exchange's public endpoint
    rest_url: str | None = None


class IngestConfig(_Section, frozen=True):
    channels: list[Literal["trades", "quotes", "book"]] = msgspec.field(
        default_factory=lambda: ["trades", "quotes", "book"]
    )
    # No frame for this long (exchanges send heartbeats or data far more often): the connection is stalled.
    read_timeout_s: PositiveSeconds = 60.0
    backoff_initial_s: PositiveSeconds = 1.0
    backoff_max_s: PositiveSeconds = 60.0
    healthy_after_s: PositiveSeconds = 30.0  # a connection up this long resets the backoff
    # WebSocket keep-alive: a ping every ping_interval_s, unanswered within ping_timeout_s drops the connection.
    # A connector held by backpressure (the bus away, the queue full) reads nothing, pongs included: a hold longer
    # than the two together costs the connection, and the trades the exchange sends meanwhile (counted as a gap).
    ping_interval_s: PositiveSeconds = 20.0
    ping_timeout_s: PositiveSeconds = 20.0
    queue_size: PositiveInt = 5_000  # frames' events between connectors and publisher (backpressure beyond)
    book_buffer_size: PositiveInt = 5_000  # deltas held while a REST book snapshot is fetched
    rest_timeout_s: PositiveSeconds = 10.0
    # On SIGTERM, how long the connectors' last events may wait for a bus that is away; then they are lost (logged).
    shutdown_timeout_s: PositiveSeconds = 30.0
    capture_path: str | None = None  # write every raw frame here, in the recorded-session format
    status_interval_s: PositiveSeconds = 2.0  # connector state onto market.status (the control panel) this often
    instance: str = ""  # names this process in those records; "" = the host name
    metrics_port: PortNumber = 9101  # /metrics and /healthz of ingest (and up)


class StreamsConfig(_Section, frozen=True):
    app_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]+$")] = "market-ingestor-worker"
    intervals: list[str] = msgspec.field(default_factory=lambda: ["1m", "5m", "15m", "1h", "4h", "1d"])
    grace_ms: NonNegativeInt = 2_000  # out-of-order trades this late still land in their window
    max_lateness_ms: NonNegativeInt = 600_000  # later than this, a trade cannot correct its closed kline
    update_interval_ms: PositiveInt = 250  # in-progress klines per instrument and interval, at most this often
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    standby_replicas: NonNegativeInt = 1
    data_dir: str = ".devstack/worker-data"  # RocksDB tables live here, per worker
    # Input batches: records taken from the stream at once (each record a batch of trades or klines), and more
    # such takes while a backlog lasts, up to batch_max_bytes of records; a partial take is processed at once.
    batch_size: PositiveInt = 32
    batch_max_bytes: PositiveInt = 8 * 1024 * 1024
    batch_within_s: PositiveSeconds = 0.05
    # State rows saved and input committed (under exactly_once: transactions committed) at most this often.
    commit_interval_s: PositiveSeconds = 1.0
    timer_interval_s: PositiveSeconds = 0.5  # wall-clock closing of quiet windows and in-progress updates
    indicators: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SPECS))
    # Instruments whose decoded indicator rows the worker keeps between batches (least recently used dropped);
    # more instruments than this on one worker means rows are decoded and replayed again per batch.
    indicator_cache_rows: PositiveInt = 4096
    # Memory blocks at least this large get their own mapping, returned to the system when freed (glibc only; 0
    # leaves the allocator's own adjusting threshold). 131072 keeps freed record buffers from piling up in the
    # heap (~22 MB less peak RSS on bench/klines.py) but costs ~15% more CPU per trade (docs/benchmarks.md).
    malloc_mmap_threshold_bytes: Annotated[int, msgspec.Meta(ge=0, le=32 * 1024 * 1024)] = 0
    web_port: PositiveInt = 6066
    metrics_port: PortNumber = 9102  # /metrics and /healthz of the worker


class SinkConfig(_Section, frozen=True):
    """The sink service (``market-ingestor sink``): topics -> PostgreSQL/TimescaleDB. Its consumer group is
    ``{streams.app_id}-sink``, so a slow database never holds back the stream worker."""

    batch_size: PositiveInt = 10_000  # rows per database transaction, at most (a bus record is never split)
    writes_in_flight: PositiveInt = 2  # transactions of one topic at the same time; commits stay in order
    flush_interval_s: PositiveSeconds = 1.0  # a partial batch is written once its oldest row is this old
    retry_initial_s: PositiveSeconds = 0.1  # database write retries: exponential backoff from here...
    retry_max_s: PositiveSeconds = 10.0  # ...to here, forever (the batch is held, intake stops meanwhile)
    shutdown_timeout_s: PositiveSeconds = 30.0  # on SIGTERM, wait this long for the last batch to be written
    maintain_interval_s: PositiveSeconds = 3600.0  # partitions ahead and retention (RowWriter.maintain), this often
    metrics_port: PortNumber = 9103  # /metrics and /healthz of the sink


class ApiConfig(_Section, frozen=True):
    """The query API (``market-ingestor api``): REST over the stored data plus a live ticker."""

    host: str = "0.0.0.0"
    port: PositiveInt = 8000
    auth_enabled: bool = True  # requests need an API key (``apikeys create``); /healthz, /readyz, /openapi.json never
    default_page_size: PositiveInt = 500
    max_page_size: PositiveInt = 5_000  # a larger ``limit`` is refused (400), not truncated
    max_tickers: PositiveInt = 100  # symbols in one /api/v1/tickers request
    rate_limit_per_s: PositiveInt = 20  # per key and API instance, unless the key has its own
    rate_limit_burst: PositiveInt = 40
    key_cache_ttl_s: PositiveSeconds = 5.0  # a revoked key stops working within this long
    key_cache_size: PositiveInt = 10_000
    symbols_refresh_s: PositiveSeconds = 30.0  # the catalog of stored symbols is re-read this often
    db_pool_size: PositiveInt = 10
    query_timeout_s: PositiveSeconds = 10.0
    ticker_flush_s: PositiveSeconds = 0.1  # Kafka: the ticker table is written at most this often per instrument
    panel_refresh_s: PositiveSeconds = 2.0  # the control panel's offsets (throughput, lag) are read this often
    panel_push_url: str = ""  # the push gateway as the panel's browser reaches it; "" = ws://<page host>:<push.port>/


class PushConfig(_Section, frozen=True):
    """The WebSocket push gateway (``market-ingestor push``, docs/push.md)."""

    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765  # 0: any free port (tests)
    # Several gateway processes on one host share the port (SO_REUSEPORT, the kernel spreads the connections):
    # one process uses one core, so run one per core.
    reuse_port: bool = False
    max_clients: PositiveInt = 10_000  # beyond this, handshakes are refused with HTTP 503
    max_subscriptions: PositiveInt = 100  # (channel, symbol) pairs per client
    max_message_bytes: PositiveInt = 4096  # a larger client message gets an error reply
    # A client with no subscription that sends nothing for this long is closed; subscribers are kept alive (and
    # dead peers found) by WebSocket pings every ping_interval_s, answered within ping_timeout_s.
    idle_timeout_s: PositiveSeconds = 60.0
    ping_interval_s: PositiveSeconds = 20.0
    ping_timeout_s: PositiveSeconds = 20.0
    allowed_origins: list[str] = msgspec.field(default_factory=list)  # empty: any Origin header
    queue_size: PositiveInt = 256  # updates waiting for one client's socket; oldest lost beyond
    max_behind_s: PositiveSeconds = 10.0  # a client whose updates wait this long without catching up is closed
    write_limit_bytes: PositiveInt = 32 * 1024  # a client's socket buffer above this: its updates queue up
    # The kernel's send buffer per client socket (SO_SNDBUF); 0 leaves it to the kernel, which grows it up to
    # net.ipv4.tcp_wmem's maximum (4 MiB) for a client that stops reading.
    socket_send_buffer_bytes: NonNegativeInt = 128 * 1024
    close_timeout_s: PositiveSeconds = 5.0  # a closing handshake not answered by then: the socket is dropped
    auth_enabled: bool = False  # require an API key (?api_key= or X-API-Key header) at the handshake
    state_max_entries: PositiveInt = 100_000  # latest kline/quote/indicator per (channel, symbol), for subscribe
    prime_records: NonNegativeInt = 2_000  # read back per partition at start to fill that state
    metrics_port: PortNumber = 9104  # /metrics and /healthz, not on the public WebSocket port


class MetricsConfig(_Section, frozen=True):
    """Prometheus ``/metrics`` and ``/healthz``: ingest, worker, sink and push serve them on their section's
    ``metrics_port`` (the api on its own port)."""

    host: str = "0.0.0.0"
    # Symbols with their own label value, over all exchanges; later ones are counted under symbol="other".
    max_symbols: PositiveInt = 1_000
    sample_interval_s: PositiveSeconds = 5.0  # consumer lag and table sizes are read this often


class Config(_Section, frozen=True):
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    streams: StreamsConfig = msgspec.field(default_factory=StreamsConfig)
    sink: SinkConfig = msgspec.field(default_factory=SinkConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    push: PushConfig = msgspec.field(default_factory=PushConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    exchanges: dict[str, ExchangeConfig] = msgspec.field(default_factory=dict)  # names: the exchange registry


# Well-known variables and where they land in the config tree.
_WELL_KNOWN_ENV: dict[str, tuple[str, ...]] = {
    "KAFKA_BOOTSTRAP": ("bus", "kafka", "bootstrap"),
    "NATS_URL": ("bus", "nats", "url"),
    "DATABASE_URL": ("database", "url"),
}


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _env_value(raw: str) -> Any:
    if raw[:1] in "[{":
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"environment value {raw!r} looks like JSON but is not: {exc}") from exc
    return raw


def apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, path in _WELL_KNOWN_ENV.items():
        if environ.get(name):
            _set_path(tree, path, environ[name])
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX):
            path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
            if not all(path):
                raise ConfigError(f"malformed override {name}: empty path segment")
            _set_path(tree, path, _env_value(raw))
    return tree


def config_path(explicit: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read; ``None`` when no file is named and the default one is absent."""
    if explicit is not None:
        return Path(explicit)
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _field_type(path: str) -> Any:
    """The annotated type at a msgspec error path such as ``$.bus.kind`` (None when not found)."""
    node: Any = Config
    for part in path.removeprefix("$.").split("."):
        hints = get_type_hints(node, include_extras=True) if isinstance(node, type) else {}
        if part in hints:
            node = hints[part]
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return None
    return node


def _explain(error: msgspec.ValidationError) -> str:
    """msgspec says "Invalid enum value 'x'" for a Literal; add the values that are allowed."""
    message = str(error)
    match = re.search(r"- at (`key` in )?`(\$[^`]*)`", message)
    if match and message.startswith("Invalid enum value"):
        field_type = _field_type(match.group(2))
        if match.group(1) and get_origin(field_type) is dict:
            field_type = get_args(field_type)[0]
        allowed = get_args(field_type)
        if allowed:
            message += f" (expected one of: {', '.join(map(repr, allowed))})"
    return message


def from_mapping(tree: Mapping[str, Any], source: str = "config") -> Config:
    try:
        # strict=False: environment values are strings, and "5" must still fill an int field.
        config = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid {source}: {_explain(exc)}") from exc
    from market_ingestor.ingestor.exchanges import REGISTRY  # the one list of exchanges

    for name in config.exchanges:
        if name not in REGISTRY:
            expected = ", ".join(map(repr, REGISTRY))
            raise ConfigError(
                f"invalid {source}: unknown exchange {name!r} - at `key` in `$.exchanges` (expected one of: {expected})"
            )
    _check_streams(config.streams, source)
    return config


def _check_streams(streams: StreamsConfig, source: str) -> None:
    """Interval names and indicator specs are checked at load, naming the field, not when a worker first needs
    them."""
    try:
        parse_intervals(streams.intervals)
    except ConfigError as exc:
        raise ConfigError(f"invalid {source}: {exc} - at `$.streams.intervals`") from exc
    for index, spec in enumerate(streams.indicators):
        try:
            parse_spec(spec)
        except IndicatorSpecError as exc:
            raise ConfigError(f"invalid {source}: {exc} - at `$.streams.indicators[{index}]`") from exc
    duplicates = sorted({spec for spec in streams.indicators if streams.indicators.count(spec) > 1})
    if duplicates:
        twice = duplicates[0]
        raise ConfigError(f"invalid {source}: indicator {twice!r} is configured twice - at `$.streams.indicators`")


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    file = config_path(path, environ)
    tree = read_toml(file) if file is not None else {}
    source = f"config ({file})" if file is not None else "config"
    return from_mapping(apply_env(tree, environ), source)
