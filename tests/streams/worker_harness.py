"""Shared by the worker tests: trades over 20 minutes for three symbols, their klines and indicators computed by
the pure code, a publisher, a read_committed watcher of the worker's outputs and the worker as a subprocess."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.records import decode_events
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.devstack.stack import StackInfo
from market_ingestor.indicators import compute
from market_ingestor.model import IndicatorValue, Kline, Trade, encode
from market_ingestor.streams.klines import KlineSettings, aggregate

MINUTE = 60_000_000_000
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
SPREAD_SYMBOLS = ("DDDUSDT", "AAAUSDT", "GGGUSDT")  # binance.<symbol> in partitions 0, 1 and 2 of 3 (murmur2)
INTERVALS = ("1m", "5m")
INDICATOR_SPECS = ("sma_3", "rsi_2")


def make_trades(count: int, seed: int, symbols: tuple[str, ...] = SYMBOLS, quiet_ns: int = 1_000_000) -> list[Trade]:
    """Trades over 20 minutes of event time, a little out of order (within the 2 s grace), ending ``quiet_ns``
    before a 5-minute boundary: by default just before, so every window can close by the wall clock soon after
    the last trade. The default symbols all hash to partition 1 of 3; :data:`SPREAD_SYMBOLS` cover every
    partition."""
    rng = random.Random(seed)
    start = (1_700_000_000_000_000_000 // (5 * MINUTE)) * 5 * MINUTE
    step = (20 * MINUTE - quiet_ns) // count
    trades = []
    for n in range(count):
        ts = start + n * step - rng.randrange(0, 1_000_000_000)  # up to 1 s early: out of order
        price = Decimal(10_000 + rng.randrange(-500, 500)) / 100
        qty = Decimal(rng.randrange(1, 10_000)) / 1000
        trades.append(
            Trade("binance", symbols[n % len(symbols)], str(n), price, qty, rng.choice(["buy", "sell"]), ts, ts)
        )
    return trades


def expected_klines(trades: list[Trade]) -> dict[tuple[str, str, int], Kline]:
    settings = KlineSettings(intervals=INTERVALS)
    by_symbol: dict[str, list[Trade]] = {}
    for trade in trades:
        by_symbol.setdefault(trade.symbol, []).append(trade)
    result = {}
    for symbol_trades in by_symbol.values():
        for kline in aggregate(symbol_trades, settings):
            result[(kline.symbol, kline.interval, kline.open_time)] = kline
    return result


IndicatorSeries = dict[tuple[str, str, str], dict[int, IndicatorValue]]  # (symbol, interval, name) -> time -> value


def expected_indicators(klines: dict[tuple[str, str, int], Kline]) -> IndicatorSeries:
    result: IndicatorSeries = {}
    for symbol in SYMBOLS:
        for interval in INTERVALS:
            series = sorted(
                (k for k in klines.values() if k.symbol == symbol and k.interval == interval), key=lambda k: k.open_time
            )
            for spec in INDICATOR_SPECS:
                result[(symbol, interval, spec)] = {value.open_time: value for value in compute(spec, series)}
    return result


async def publish(config: BusConfig, trades: list[Trade]) -> None:
    bus = open_bus(config)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.topic_prefix))
    publisher = bus.publisher()
    await publisher.start()
    for trade in trades:
        await publisher.publish(config.topic_prefix + Topics.TRADES, bus_key(trade), encode(trade), event_id(trade))
    await publisher.stop()


class KlineWatcher:
    """Reads the klines and indicators topics (read_committed) as the worker writes them; keeps the highest
    revision per window and counts how often each (window, revision) was closed."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        bus = open_bus(config)
        self.follower = bus.follower([config.topic_prefix + Topics.KLINES, config.topic_prefix + Topics.INDICATORS])
        self.closed: dict[tuple[str, str, int], Kline] = {}
        self.closings: Counter[tuple[str, str, int, int]] = Counter()
        self.indicators: dict[tuple[str, str, str], dict[int, IndicatorValue]] = {}

    async def start(self) -> None:
        """Creates the topics (a NATS follower needs its streams to exist), then follows them."""
        await open_bus(self.config).ensure_topics(prefixed(PIPELINE_TOPICS, self.config.topic_prefix))
        await self.follower.start()

    def _take(self, value: object) -> None:
        if isinstance(value, IndicatorValue):
            self.indicators.setdefault((value.symbol, value.interval, value.name), {})[value.open_time] = value
            return
        assert isinstance(value, Kline)
        key = (value.symbol, value.interval, value.open_time)
        if value.closed:
            self.closings[(*key, value.revision)] += 1
            if key not in self.closed or value.revision >= self.closed[key].revision:
                self.closed[key] = value

    def series(self, key: tuple[str, str, str]) -> str:
        """What the watcher saw of one indicator's klines: (open_time, revision, times closed, trades)."""
        symbol, interval, _ = key
        seen = sorted((k[2], k[3], n) for k, n in self.closings.items() if k[:2] == (symbol, interval))
        counts = {k[2]: kline.trade_count for k, kline in self.closed.items() if k[:2] == (symbol, interval)}
        return f"{key}: closed (time, revision, times seen, trades): {[(*s, counts.get(s[0])) for s in seen]}"

    async def until(self, done: Callable[[], bool], timeout_s: float = 120.0) -> None:
        async def poll() -> None:
            while not done():
                for delivery in await self.follower.fetch(max_records=5000, timeout_s=1.0):
                    for event in decode_events(delivery.value):
                        self._take(event)

        await asyncio.wait_for(poll(), timeout_s)


STDERR_TAIL_BYTES = 64 * 1024  # what a failing test shows of a worker's log


async def start_worker(config_path: Path, data_dir: Path) -> asyncio.subprocess.Process:
    """The worker as a child process. Its stderr is read as it comes (a full pipe would block the worker in a
    log call and look like a stall); :func:`worker_said` gives its last ``STDERR_TAIL_BYTES``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_path), "worker",
        "--data-dir", str(data_dir), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    tail = bytearray()

    async def drain() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(65536):
            tail.extend(chunk)
            del tail[:-STDERR_TAIL_BYTES]

    _stderr[process.pid] = (tail, asyncio.ensure_future(drain()))
    return process


_stderr: dict[int, tuple[bytearray, asyncio.Future[None]]] = {}


async def worker_said(worker: asyncio.subprocess.Process) -> str:
    """The end of what an exited worker wrote to stderr."""
    tail, drained = _stderr.pop(worker.pid)
    await drained
    return tail.decode("utf-8", "replace")


async def until_or_fail(
    watcher: KlineWatcher,
    wanted: set,
    worker: asyncio.subprocess.Process,
    indicators: dict | None = None,  # type: ignore[type-arg]
) -> None:
    """Waits for ``wanted`` closed klines (and indicator values); fails with the worker's words if they do not
    come or it dies."""

    def done() -> bool:
        if not wanted <= set(watcher.closed):
            return False
        return all(want <= set(watcher.indicators.get(key, {})) for key, want in (indicators or {}).items())

    waiting = asyncio.ensure_future(watcher.until(done))
    exited = asyncio.ensure_future(worker.wait())
    await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
    if waiting.done() and waiting.exception() is None and worker.returncode is None:
        exited.cancel()
        return
    waiting.cancel()
    if worker.returncode is None:
        worker.kill()
    await worker.wait()
    stderr = await worker_said(worker)
    missing = sorted(wanted - set(watcher.closed))
    lacking = sorted(
        (key, open_time)
        for key, want in (indicators or {}).items()
        for open_time in want - set(watcher.indicators.get(key, {}))
    )
    seen = ""
    if lacking:  # what the watcher saw of that series, to tell a lost input from a lost output
        (symbol, interval, name), _ = lacking[0]
        klines = sorted((k[2], k[3], n) for k, n in watcher.closings.items() if k[:2] == (symbol, interval))
        values = sorted(watcher.indicators.get((symbol, interval, name), {}))
        seen = f"; closed (time, revision, times seen): {klines[:8]}; values at {values[:8]}"
    pytest.fail(
        f"{len(missing)} klines never closed, e.g. {missing[:3]}; {len(lacking)} indicator values missing, e.g. "
        f"{lacking[:3]}{seen}; worker exit {worker.returncode}, said: "
        f"{stderr[-3000:]}"
    )


def worker_config(
    tmp_path: Path,
    bootstrap: str,
    prefix: str,
    guarantee: str,
    standby_replicas: int = 0,
    nats_url: str | None = None,
    session_timeout_ms: int | None = None,
) -> Path:
    """The worker's config file; with ``nats_url`` the worker runs on NATS (short leases: a killed worker's shards
    free up within 3 s)."""
    bus = f'kind = "nats"\n[bus.nats]\nurl = "{nats_url}"\nlease_ttl_s = 3.0\nworker_shards = 4\n' if nats_url else ""
    path = tmp_path / "market-ingestor.toml"
    path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n{bus}[bus.kafka]\nbootstrap = "{bootstrap}"\n'
        f"{'' if session_timeout_ms is None else f'session_timeout_ms = {session_timeout_ms}'}\n"
        f'partitions = 3\n[streams]\napp_id = "{prefix.rstrip(".")}"\nintervals = {list(INTERVALS)!r}\n'
        f'processing_guarantee = "{guarantee}"\nstandby_replicas = {standby_replicas}\nbatch_size = 4\n'
        f"indicators = {list(INDICATOR_SPECS)!r}\n".replace("'", '"')
    )
    return path


def bus_config(dev_stack: StackInfo, prefix: str, bus: str) -> BusConfig:
    """How the tests publish and watch: the worker's bus (``kafka`` with 3 partitions, or ``nats``)."""
    if bus == "nats":
        return BusConfig(kind="nats", topic_prefix=prefix, nats=NatsConfig(url=dev_stack.nats_url))
    return BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))


def without_revision(kline: Kline) -> tuple:  # type: ignore[type-arg]
    return tuple(getattr(kline, field) for field in kline.__struct_fields__ if field != "revision")


def assert_same_klines(got: dict[tuple[str, str, int], Kline], expected: dict[tuple[str, str, int], Kline]) -> None:
    # Revisions may differ (a restart can turn an in-grace trade into a late correction); the values may not.
    mismatched = [k for k, want in expected.items() if without_revision(got[k]) != without_revision(want)]
    assert not mismatched, f"{len(mismatched)} differ, e.g. {got[mismatched[0]]} != {expected[mismatched[0]]}"


def assert_same_indicators(watcher: KlineWatcher, indicators: IndicatorSeries) -> None:
    """The indicator values the watcher saw at each wanted open time equal the pure computation's."""
    for key, want in indicators.items():
        got = {open_time: watcher.indicators[key][open_time].values for open_time in want}
        assert got == {open_time: value.values for open_time, value in want.items()}, watcher.series(key)


async def stop_worker(worker: asyncio.subprocess.Process) -> str:
    """Stops the worker gracefully (it must exit 0); returns the end of what it wrote to stderr."""
    worker.send_signal(signal.SIGTERM)
    await asyncio.wait_for(worker.wait(), 60)
    stderr = await worker_said(worker)
    assert worker.returncode == 0, stderr[-3000:]
    return stderr
