"""The Faust worker on the real Kafka of the dev stack: its closed klines equal the pure aggregation of the same
trades, also when the worker is killed with SIGKILL in the middle of the stream and restarted, under both
processing guarantees."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.config import BusConfig, KafkaConfig
from market_ingestor.model import Kline, Topics, Trade, bus_key, decode, encode, event_id
from market_ingestor.streams.klines import KlineSettings, aggregate

pytestmark = pytest.mark.kafka

MINUTE = 60_000_000_000
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
INTERVALS = ("1m", "5m")


def make_trades(count: int, seed: int) -> list[Trade]:
    """Trades over 20 minutes of event time, a little out of order (within the 2 s grace), ending just before a
    5-minute boundary so every window can close by the wall clock soon after the last trade."""
    rng = random.Random(seed)
    start = (1_700_000_000_000_000_000 // (5 * MINUTE)) * 5 * MINUTE
    step = (20 * MINUTE - 1_000_000) // count
    trades = []
    for n in range(count):
        ts = start + n * step - rng.randrange(0, 1_000_000_000)  # up to 1 s early: out of order
        price = Decimal(10_000 + rng.randrange(-500, 500)) / 100
        qty = Decimal(rng.randrange(1, 10_000)) / 1000
        trades.append(Trade("binance", SYMBOLS[n % 3], str(n), price, qty, rng.choice(["buy", "sell"]), ts, ts))
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


async def publish(config: BusConfig, trades: list[Trade]) -> None:
    bus = open_bus(config)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.topic_prefix))
    publisher = bus.publisher()
    await publisher.start()
    for trade in trades:
        await publisher.publish(config.topic_prefix + Topics.TRADES, bus_key(trade), encode(trade), event_id(trade))
    await publisher.stop()


class KlineWatcher:
    """Reads the klines topic as the worker writes it; keeps the highest revision per window."""

    def __init__(self, config: BusConfig) -> None:
        self.follower = open_bus(config).follower([config.topic_prefix + Topics.KLINES])
        self.closed: dict[tuple[str, str, int], Kline] = {}

    async def until(self, wanted: set[tuple[str, str, int]], timeout_s: float = 120.0) -> None:
        async def poll() -> None:
            while not wanted <= set(self.closed):
                for delivery in await self.follower.fetch(max_records=5000, timeout_s=1.0):
                    kline = decode(delivery.value)
                    assert isinstance(kline, Kline)
                    key = (kline.symbol, kline.interval, kline.open_time)
                    if kline.closed and (key not in self.closed or kline.revision >= self.closed[key].revision):
                        self.closed[key] = kline

        await asyncio.wait_for(poll(), timeout_s)


async def start_worker(config_path: Path, data_dir: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_path), "worker",
        "--data-dir", str(data_dir), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def worker_config(tmp_path: Path, bootstrap: str, prefix: str, guarantee: str) -> Path:
    path = tmp_path / "market-ingestor.toml"
    path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\nbootstrap = "{bootstrap}"\n'
        f'partitions = 3\n[streams]\napp_id = "{prefix.rstrip(".")}"\nintervals = {list(INTERVALS)!r}\n'
        f'processing_guarantee = "{guarantee}"\nstandby_replicas = 0\nbatch_size = 200\n'.replace("'", '"')
    )
    return path


def _without_revision(kline: Kline) -> tuple:  # type: ignore[type-arg]
    return tuple(getattr(kline, field) for field in kline.__struct_fields__ if field != "revision")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_closed_klines_survive_a_sigkill_and_restart(dev_stack, tmp_path, guarantee):
    if guarantee == "exactly_once" and not dev_stack.supports_transactions:
        pytest.skip(f"{dev_stack.kafka_kind} has no Kafka transactions")
    prefix = f"w{uuid.uuid4().hex[:8]}."
    bus_config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    trades = make_trades(6000, seed=3)
    expected = expected_klines(trades)
    config_path = worker_config(tmp_path, dev_stack.kafka_bootstrap, prefix, guarantee)
    watcher = KlineWatcher(bus_config)
    await watcher.follower.start()
    try:
        await publish(bus_config, trades[:3000])
        worker = await start_worker(config_path, tmp_path / "data")
        first_minutes = {k for k in expected if k[1] == "1m"}
        # Kill it as soon as it has emitted some closed klines: mid-stream, state and offsets in flight.
        await watcher.until({sorted(first_minutes, key=lambda k: k[2])[0]})
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        await publish(bus_config, trades[3000:])
        worker = await start_worker(config_path, tmp_path / "data")
        try:
            await watcher.until(set(expected))
        except TimeoutError:
            worker.kill()
            _, stderr = await worker.communicate()
            missing = sorted(set(expected) - set(watcher.closed))
            pytest.fail(
                f"{len(missing)} klines never closed, e.g. {missing[:3]}; worker said: {stderr.decode()[-3000:]}"
            )
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(worker.communicate(), 60)
        assert worker.returncode == 0, stderr.decode()[-3000:]
    finally:
        await watcher.follower.stop()
    # Revisions may differ (a restart can turn an in-grace trade into a late correction); the values may not.
    mismatched = [k for k, want in expected.items() if _without_revision(watcher.closed[k]) != _without_revision(want)]
    assert not mismatched, (
        f"{len(mismatched)} differ, e.g. {watcher.closed[mismatched[0]]} != {expected[mismatched[0]]}"
    )
