"""``market-ingestor api`` as a process, with the dev stack's Kafka and PostgreSQL: the ticker follows trades and
quotes published to Kafka in batch records (skipping malformed events), survives a restart in its Faust table, and
the process stops with status 0 on SIGTERM.
Plus the pure rule of which event is "latest"."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from market_ingestor.api.keys import create_key
from market_ingestor.api.ticker_state import TickerState
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.config import BusConfig, KafkaConfig
from market_ingestor.model import Quote, Topics, Trade, bus_key, encode, event_id

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

T = 1_709_251_200_000_000_000  # 2024-03-01T00:00:00Z


def trade(trade_id: str, ts: int, price: str, symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, trade_id, Decimal(price), Decimal("0.0100"), "sell", ts, ts)


def quote(ts: int, bid: str, ask: str) -> Quote:
    return Quote("binance", "BTCUSDT", Decimal(bid), Decimal("1.50"), Decimal(ask), Decimal("0.7"), ts, ts, seq=7)


def test_the_latest_event_is_the_newest_by_exchange_time():
    state = TickerState().updated(trade("1", T + 2, "10")).updated(trade("2", T + 1, "11"))
    assert state.trade is not None and state.trade.trade_id == "1"  # the late one does not replace it
    state = state.updated(trade("3", T + 2, "12"))
    assert state.trade is not None and state.trade.trade_id == "3"  # same time: the later arrival
    state = state.updated(quote(T + 5, "9", "13")).updated(quote(T + 4, "1", "2"))
    assert state.quote is not None and state.quote.bid_price == Decimal(9)
    assert state.trade.trade_id == "3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ApiProcess:
    def __init__(self, config_path: Path, port: int, key: str) -> None:
        self.config_path, self.port, self.key = config_path, port, key
        self.process: asyncio.subprocess.Process | None = None
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers={"X-API-Key": key})

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(self.config_path), "api",
            "--port", str(self.port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        await self.until(lambda: self.status("/readyz", 200), "ready", 90.0)

    async def status(self, path: str, wanted: int) -> bool:
        try:
            async with self.http.get(path) as response:
                return response.status == wanted
        except aiohttp.ClientConnectionError:
            return False

    async def json(self, path: str, status: int = 200) -> Any:
        async with self.http.get(path) as response:
            assert response.status == status, await response.text()
            return await response.json()

    async def answers(self, path: str, body: Any) -> bool:
        async with self.http.get(path) as response:
            return response.status == 200 and await response.json() == body

    async def until(self, condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} after {timeout_s} s; {await self.stderr()}")
            assert self.process is not None and self.process.returncode is None, await self.stderr()
            await asyncio.sleep(0.2)

    async def stderr(self) -> str:
        if self.process is None or self.process.returncode is None:
            return "(still running)"
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()[-3000:]

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(self.process.communicate(), 60)
        assert self.process.returncode == 0, stderr.decode()[-3000:]
        return self.process.returncode

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.http.close()


@pytest.fixture
async def setup(dev_stack, database_url, tmp_path) -> AsyncIterator[tuple[BusConfig, Path, str]]:
    prefix = f"a{uuid.uuid4().hex[:8]}."
    bus = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    await open_bus(bus).ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
    path = tmp_path / "market-ingestor.toml"
    path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\n'
        f'bootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 3\n[database]\nurl = "{database_url}"\n'
        f'[streams]\napp_id = "{prefix.rstrip(".")}"\n[api]\nauth_enabled = true\nticker_flush_s = 0.05\n'
    )
    connection = await asyncpg.connect(database_url)
    try:
        key = (await create_key(connection, "service-test")).key
    finally:
        await connection.close()
    yield bus, path, key


async def publish(bus: BusConfig, *events: Trade | Quote | bytes) -> None:
    """Events, or raw bytes (garbage) for the trades topic."""
    publisher = open_bus(bus).publisher()
    await publisher.start()
    try:
        for event in events:
            if isinstance(event, bytes):
                await publisher.publish(bus.topic_prefix + Topics.TRADES, "binance.BTCUSDT", event)
                continue
            topic = bus.topic_prefix + (Topics.TRADES if isinstance(event, Trade) else Topics.QUOTES)
            await publisher.publish(topic, bus_key(event), encode(event), event_id(event))
    finally:
        await publisher.stop()


EXPECTED = {
    "exchange": "binance", "symbol": "BTCUSDT",
    "last_trade": {"trade_id": "2", "price": "42000.20", "qty": "0.0100", "side": "sell",
                   "time": "2024-03-01T00:00:02.000000001Z", "time_ms": 1_709_251_202_000},
    "quote": {"bid_price": "42000.10", "bid_qty": "1.50", "ask_price": "42000.30", "ask_qty": "0.7",
              "time": "2024-03-01T00:00:03.000000000Z", "time_ms": 1_709_251_203_000},
}  # fmt: skip


async def test_the_ticker_follows_kafka_and_survives_a_restart(setup):
    bus, config_path, key = setup
    api = ApiProcess(config_path, free_port(), key)
    try:
        await api.start()
        assert await api.status("/api/v1/ticker/binance/BTCUSDT", 404)  # nothing seen yet: unknown
        assert await api.status("/healthz", 200)
        assert await api.status("/metrics", 200)  # the process's own metrics, served by the API app

        # A new consumer group starts at the live edge once its partitions are assigned: send probes until one
        # shows, then everything sent afterwards is read.
        async def probe_seen() -> bool:
            await publish(bus, trade(f"p{time.monotonic_ns()}", T, "1", symbol="PROBEUSDT"))
            return await api.status("/api/v1/ticker/binance/PROBEUSDT", 200)

        await api.until(probe_seen, "reading the trades topic")
        await publish(bus, b"not a trade")  # a record of its own ("[not a trade]"): not JSON at all
        # A bad event in a batch record with good ones: skipped, the good ones are applied.
        await publish(
            bus, b'{"type": "trade", "price": "NaN"}', trade("1", T + 1_000_000_000, "42000.00"),
            trade("2", T + 2_000_000_001, "42000.20"),
            quote(T + 3_000_000_000, "42000.10", "42000.30"),
        )  # fmt: skip

        await api.until(lambda: api.answers("/api/v1/ticker/binance/BTCUSDT", EXPECTED), "showing the latest")
        both = await api.json("/api/v1/tickers?symbols=binance.BTCUSDT,binance.PROBEUSDT")
        assert [t["symbol"] for t in both["data"]] == ["BTCUSDT", "PROBEUSDT"] and both["data"][0] == EXPECTED
        assert both["data"][1]["quote"] is None and both["data"][1]["last_trade"]["price"] == "1"
        symbols = await api.json("/api/v1/symbols")
        assert {s["id"]: s["live"] for s in symbols["data"]} == {"binance.BTCUSDT": True, "binance.PROBEUSDT": True}
        assert await api.stop() == 0

        # A new instance reads the table's changelog: the ticker is there before any new event arrives.
        await api.start()
        assert await api.json("/api/v1/ticker/binance/BTCUSDT") == EXPECTED
        assert await api.stop() == 0
    finally:
        await api.close()
