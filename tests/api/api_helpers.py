"""Helpers of the query API tests: the schema, the API app served by a real aiohttp server on a free port, and
``market-ingestor api`` as a child process with trades and quotes published to its bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from market_ingestor.api.app import build_web_app
from market_ingestor.api.keys import KeyVerifier
from market_ingestor.api.monitor import PanelMonitor
from market_ingestor.api.store import Store
from market_ingestor.api.ticker_state import MemoryTicker, TickerView
from market_ingestor.bus import open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics
from market_ingestor.config import BusConfig, Config
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade, encode
from market_ingestor.sinks.writer import RowWriter


async def write(database_url: str, events: Sequence[Trade | Kline | IndicatorValue]) -> None:
    """Stores events the way the sinks do."""
    writer = RowWriter(database_url)
    await writer.start()
    try:
        await writer.write(events)
    finally:
        await writer.close()


@contextlib.asynccontextmanager
async def serve(
    config: Config,
    ticker: TickerView | None = None,
    verifier_ttl_s: float | None = None,
    monitor: PanelMonitor | None = None,
) -> AsyncIterator[tuple[TestClient, Store]]:
    """The API app on a real server (a free localhost port) with a real database pool; a MemoryTicker unless
    another ticker view is given; the control panel's monitor if given (started and stopped by the caller)."""
    store = Store(config.database.url, pool_size=4)
    await store.start()
    verifier = KeyVerifier(store.pool, verifier_ttl_s or config.api.key_cache_ttl_s)
    app = build_web_app(config, store, ticker or MemoryTicker(), verifier, monitor)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, store
    finally:
        await client.close()
        await store.stop()


T = 1_709_251_200_000_000_000  # 2024-03-01T00:00:00Z


def trade(trade_id: str, ts: int, price: str, symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, trade_id, Decimal(price), Decimal("0.0100"), "sell", ts, ts)


def quote(ts: int, bid: str, ask: str) -> Quote:
    return Quote("binance", "BTCUSDT", Decimal(bid), Decimal("1.50"), Decimal(ask), Decimal("0.7"), ts, ts, seq=7)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ApiProcess:
    """``market-ingestor api`` as a child process on ``port``; :meth:`start` returns once ``/readyz`` answers 200."""

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
