"""Helpers of the query API tests: the schema, and the API served by a real aiohttp server on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from aiohttp.test_utils import TestClient, TestServer

from market_ingestor.api.app import build_web_app
from market_ingestor.api.keys import KeyVerifier
from market_ingestor.api.monitor import PanelMonitor
from market_ingestor.api.store import Store
from market_ingestor.api.ticker_state import MemoryTicker, TickerView
from market_ingestor.config import Config
from market_ingestor.model import IndicatorValue, Kline, Trade
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
