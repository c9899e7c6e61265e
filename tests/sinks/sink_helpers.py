"""Running ``market-ingestor sink`` in tests: data, a fresh database, one test's topics and config, the process."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from db_helpers import PgServer, fresh_database
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.records import BatchDecoder
from market_ingestor.bus.topics import Topics, prefixed, topic_of
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.devstack import StackInfo
from market_ingestor.model import Kline, Trade, encode
from market_ingestor.streams.klines import InstrumentKlines, KlineSettings

SECOND = 10**9
MINUTE = 60 * SECOND
T0 = 1_709_208_000 * SECOND  # 2024-02-29 12:00:00 UTC
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
KLINE_SETTINGS = KlineSettings(intervals=("1m", "5m"))
COUNT = 200_000
TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"

trade_decoder = BatchDecoder(Trade)


# --- data ---------------------------------------------------------------------------------------------------------


def make_trades(count: int, seed: int) -> list[Trade]:
    """Trades over 100 minutes of four instruments; every 997th one arrives 90 s late, so closed klines get
    corrected (revisions)."""
    rng = random.Random(seed)
    step = 100 * MINUTE // count
    trades = []
    for n in range(count):
        ts = T0 + n * step - (90 * SECOND if n % 997 == 996 else 0)
        price = Decimal(rng.randrange(9_000_000, 11_000_000)) / 1000
        qty = Decimal(rng.randrange(1, 100_000)) / 10_000
        side = "buy" if rng.random() < 0.5 else "sell"
        trades.append(Trade("binance", SYMBOLS[n % len(SYMBOLS)], str(n), price, qty, side, ts, ts))
    return trades


KlineKey = tuple[str, str, int]


def with_klines(trades: list[Trade]) -> tuple[list[Trade | Kline], dict[KlineKey, Kline]]:
    """The trades interleaved with the klines the pure aggregation emits for them, as the stream worker would:
    closed, corrected (higher revision) and in-progress ones; and the last closed kline of each window."""
    states = {s: InstrumentKlines.new("binance", s, KLINE_SETTINGS) for s in SYMBOLS}
    events: list[Trade | Kline] = []
    for n, trade in enumerate(trades):
        events.append(trade)
        state = states[trade.symbol]
        events.extend(state.apply(trade, wall_ns=trade.ts).klines)
        if n % 1000 == 999:
            events.extend(state.in_progress(trade.ts))
    for state in states.values():
        events.extend(state.flush())
    final = {}
    for event in events:
        if isinstance(event, Kline) and event.closed:
            final[(event.symbol, event.interval, event.open_time)] = event
    return events, final


# --- servers ------------------------------------------------------------------------------------------------------


@pytest.fixture
async def database(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone (on plain PostgreSQL, then on TimescaleDB)."""
    async with fresh_database(pg_server, "sink", migrated=True) as url:
        yield url


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
    yield conn
    await conn.close()


class Stack:
    """One test's topics (a random prefix) and sink configuration."""

    def __init__(self, dev_stack: StackInfo, database: str, tmp_path: Path, kind: str = "kafka") -> None:
        self.kind = kind
        self.nats_url = dev_stack.nats_url
        self.prefix = f"k{uuid.uuid4().hex[:8]}."
        self.app_id = self.prefix.rstrip(".")
        self.group = f"{self.app_id}-sink"
        self.bootstrap = dev_stack.kafka_bootstrap
        self.database = database
        self.bus_config = BusConfig(
            kind="nats" if kind == "nats" else "kafka",
            topic_prefix=self.prefix,
            kafka=KafkaConfig(bootstrap=self.bootstrap, partitions=3),
            nats=NatsConfig(url=self.nats_url, storage="memory"),
        )
        self.config_path = tmp_path / "market-ingestor.toml"
        self.log_path = tmp_path / "sink.log"
        self.configure()

    def configure(self, **sink: object) -> None:
        settings = {"batch_size": 1000, "flush_interval_s": 0.2, "retry_initial_s": 0.05, "retry_max_s": 0.5}
        settings.update(sink)
        lines = [
            "[log]", 'level = "INFO"', "[bus]", f'kind = "{self.kind}"', f'topic_prefix = "{self.prefix}"',
            # A killed sink's unacknowledged NATS messages come back after ack_wait_s: not 30 s in a test.
            "[bus.nats]", f'url = "{self.nats_url}"', 'storage = "memory"', "ack_wait_s = 2.0", "[bus.kafka]",
            f'bootstrap = "{self.bootstrap}"', "partitions = 3", "session_timeout_ms = 6000", "[database]",
            f'url = "{self.database}"', "[streams]", f'app_id = "{self.app_id}"', "[sink]",
            *(f"{key} = {value!r}" for key, value in settings.items()),
        ]  # fmt: skip
        self.config_path.write_text("\n".join(lines) + "\n")

    def topic(self, name: str) -> str:
        return self.prefix + name

    async def ensure_topics(self) -> None:
        await open_bus(self.bus_config).ensure_topics(prefixed(PIPELINE_TOPICS, self.prefix))

    async def publish(self, events: Iterable[Trade | Kline]) -> None:
        publisher = open_bus(self.bus_config).publisher()
        await publisher.start()
        try:
            for event in events:
                await publisher.publish(self.topic(topic_of(event)), bus_key(event), encode(event), event_id(event))
        finally:
            await publisher.stop()

    async def committed_trade_ids(self) -> set[str]:
        """The trades below the sink group's committed offsets: what the sink has declared stored."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.group)
        finally:
            await admin.close()
        topic = self.topic(Topics.TRADES)
        committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
        records = await open_bus(self.bus_config).read_topic(topic)
        return {
            trade.trade_id
            for record in records
            if record.position < committed.get(record.partition, 0)
            for trade in trade_decoder.decode(record.value)
        }


class SinkProcess:
    """``market-ingestor sink`` as a child process; its log (all runs) goes to a file."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.stack.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(self.stack.config_path), "sink",
            stdout=asyncio.subprocess.DEVNULL, stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    async def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            if self._log is not None:
                self._log.close()

    def log(self) -> str:
        return self.stack.log_path.read_text(errors="replace")


@pytest.fixture
async def sinks() -> AsyncIterator[list[SinkProcess]]:
    """Makes sure no sink process outlives its test."""
    started: list[SinkProcess] = []
    yield started
    for sink in started:
        if sink.proc is not None and sink.proc.returncode is None:
            await sink.stop(signal.SIGKILL)


async def start_sink(stack: Stack, sinks: list[SinkProcess]) -> SinkProcess:
    sink = SinkProcess(stack)
    await sink.start()
    sinks.append(sink)
    return sink


async def until(check: Callable[[], Awaitable[bool]], sink: SinkProcess, what: str, timeout_s: float = 150) -> None:
    """Polls ``check`` until it holds; fails with the sink's log tail if it does not in time."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline or (sink.proc is not None and sink.proc.returncode is not None):
            pytest.fail(f"{what}: not reached (sink exit code {sink.proc and sink.proc.returncode}); log:\n"
                        f"{sink.log()[-4000:]}")  # fmt: skip
        await asyncio.sleep(0.05)


async def trade_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM market_trades"))


async def at_least(db: asyncpg.Connection, count: int) -> bool:
    return await trade_count(db) >= count


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def assert_trades_stored_once(db: asyncpg.Connection, trades: list[Trade]) -> None:
    row = await db.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT (exchange, symbol, trade_id)) AS distinct_n, sum(price * qty) AS value,"
        " sum(qty) FILTER (WHERE side = 'buy') AS bought FROM market_trades"
    )
    assert row["n"] == row["distinct_n"] == len(trades)
    # Exact values, not only the count: every price and amount arrived as the Decimal it was published as.
    assert row["value"] == sum(t.price * t.qty for t in trades)
    assert row["bought"] == sum(t.qty for t in trades if t.side == "buy")


KLINE_SQL = """
SELECT symbol, interval, (extract(epoch FROM open_time) * 1000000)::bigint AS open_us, open, high, low, close,
       volume, quote_volume, trade_count, taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id,
       vwap, closed, revision
FROM market_klines"""


def kline_row(k: Kline) -> tuple[object, ...]:
    return (
        k.symbol, k.interval, k.open_time // 1000, k.open, k.high, k.low, k.close, k.volume, k.quote_volume,
        k.trade_count, k.taker_buy_volume, k.taker_buy_quote_volume, k.first_trade_id, k.last_trade_id, k.vwap,
        k.closed, k.revision,
    )  # fmt: skip
