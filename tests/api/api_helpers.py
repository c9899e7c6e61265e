"""Helpers of the query API tests: the schema, and the API served by a real aiohttp server on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from market_ingestor.api.app import build_web_app
from market_ingestor.api.keys import KeyVerifier
from market_ingestor.api.store import Store
from market_ingestor.api.ticker import MemoryTicker, TickerView
from market_ingestor.config import Config
from market_ingestor.devstack import StackInfo

MIGRATIONS = Path(__file__).resolve().parents[2] / "src" / "market_ingestor" / "sinks" / "migrations"

# Interim: the storage branch's migrations replace this (market_ingestor.sinks.schema.migrate).
_INTERIM_SCHEMA = """
CREATE TABLE market_trades (
    exchange text NOT NULL, symbol text NOT NULL, trade_id text NOT NULL, ts timestamptz NOT NULL,
    price numeric NOT NULL, qty numeric NOT NULL, side text NOT NULL,
    PRIMARY KEY (exchange, symbol, trade_id, ts)
);
CREATE INDEX ON market_trades (exchange, symbol, ts);
CREATE TABLE market_klines (
    exchange text NOT NULL, symbol text NOT NULL, interval text NOT NULL, open_time timestamptz NOT NULL,
    open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,
    volume numeric NOT NULL, quote_volume numeric NOT NULL, trade_count bigint NOT NULL,
    taker_buy_volume numeric NOT NULL, taker_buy_quote_volume numeric NOT NULL,
    first_trade_id text, last_trade_id text, vwap numeric NOT NULL, closed boolean NOT NULL, revision integer NOT NULL,
    PRIMARY KEY (exchange, symbol, interval, open_time)
);
CREATE TABLE indicator_values (
    exchange text NOT NULL, symbol text NOT NULL, interval text NOT NULL, name text NOT NULL,
    open_time timestamptz NOT NULL, values jsonb NOT NULL, revision integer NOT NULL,
    PRIMARY KEY (exchange, symbol, interval, name, open_time)
);
"""


def database_url_for(stack: StackInfo, name: str) -> str:
    return stack.database_url.rsplit("/", 1)[0] + "/" + name


async def migrate(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(_INTERIM_SCHEMA)
        for path in sorted(MIGRATIONS.glob("*.sql")):
            await connection.execute(path.read_text())
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def serve(
    config: Config, ticker: TickerView | None = None, verifier_ttl_s: float | None = None
) -> AsyncIterator[tuple[TestClient, Store]]:
    """The API app on a real server (a free localhost port) with a real database pool; a MemoryTicker unless
    another ticker view is given."""
    store = Store(config.database.url, pool_size=4)
    await store.start()
    verifier = KeyVerifier(store.pool, verifier_ttl_s or config.api.key_cache_ttl_s)
    app = build_web_app(config, store, ticker or MemoryTicker(), verifier)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, store
    finally:
        await client.close()
        await store.stop()
