"""Zero and tiny amounts leave the API in the exchange's digits ("0.00000000", never "0E-8"): from the database
(values the sink stored, read back from NUMERIC and jsonb), from the live ticker, and in the panel's answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal as D
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from api_helpers import serve, write

from market_ingestor.api import panel, render
from market_ingestor.api.app import json_response
from market_ingestor.api.ticker_state import MemoryTicker, TickerState
from market_ingestor.config import ApiConfig, Config, DatabaseConfig, StreamsConfig
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade

DAY_NS = 1_709_251_200_000 * 1_000_000
MINUTE_NS = 60_000_000_000
BASE = "/api/v1"

TINY_TRADE = Trade("binance", "BTCUSDT", "1", D("64000.01000000"), D("0.00000010"), "buy", DAY_NS + 5, DAY_NS + 6)
ZERO_BID = Quote("binance", "BTCUSDT", D("64000.00"), D("0.00000000"), D("64000.02"), D("0.000000010"), DAY_NS, 0)
FLAT = Kline(
    "binance", "BTCUSDT", "1m", DAY_NS, DAY_NS + MINUTE_NS - 1,
    *(D("64000.01000000"),) * 4, D("0.00000000"), D("0E-16"), 0, D("0.00000000"), D("0E-16"),
    None, None, D("64000.01000000"), True,
)  # fmt: skip
VALUES = {"macd": D("0.000000010"), "signal": D("0.00000000"), "hist": D("1E-7")}
INDICATOR = IndicatorValue("binance", "BTCUSDT", "1m", "macd_12_26_9", DAY_NS, VALUES)
PLAIN_VALUES = {"macd": "0.000000010", "signal": "0.00000000", "hist": "0.0000001"}


def test_the_ticker_answer_keeps_the_events_digits() -> None:
    body = json_response(render.ticker("binance", "BTCUSDT", TickerState(TINY_TRADE, ZERO_BID))).body
    assert isinstance(body, bytes)
    assert b'"price":"64000.01000000","qty":"0.00000010"' in body
    assert b'"bid_price":"64000.00","bid_qty":"0.00000000","ask_price":"64000.02","ask_qty":"0.000000010"' in body


def test_the_panels_answers_keep_decimal_digits() -> None:
    body = panel._json({"qty": D("0.00000000"), "price": D("1.0E-8")}).body
    assert body == b'{"qty":"0.00000000","price":"0.000000010"}'


@pytest.fixture(scope="module")
async def client(database_url: str) -> AsyncIterator[TestClient]:
    await write(database_url, [TINY_TRADE, FLAT, INDICATOR])
    config = Config(
        database=DatabaseConfig(url=database_url),
        streams=StreamsConfig(intervals=["1m"], indicators=["macd_12_26_9"]),
        api=ApiConfig(auth_enabled=False),
    )
    live = MemoryTicker({"binance.BTCUSDT": TickerState(TINY_TRADE, ZERO_BID)})
    async with serve(config, live) as (test_client, _):
        yield test_client


async def get(client: TestClient, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.postgres
async def test_stored_trades_klines_and_indicators_come_back_with_their_digits(
    client: TestClient, database_url: str
) -> None:
    window = f"from={DAY_NS // 1_000_000}&to={DAY_NS // 1_000_000 + 60_000}"
    (trade,) = (await get(client, f"{BASE}/trades/binance/BTCUSDT?{window}"))["data"]
    assert (trade["price"], trade["qty"]) == ("64000.01000000", "0.00000010")
    (kline,) = (await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&{window}"))["data"]
    assert (kline["volume"], kline["quote_volume"], kline["taker_buy_volume"]) == (
        "0.00000000",
        "0.0000000000000000",
        "0.00000000",
    )
    path = f"{BASE}/indicators/macd_12_26_9/binance/BTCUSDT?interval=1m&{window}"
    (indicator,) = (await get(client, path))["data"]
    assert indicator["values"] == PLAIN_VALUES
    conn = await asyncpg.connect(database_url)
    try:  # what the sink stored for other readers of the table
        stored = await conn.fetchval("SELECT outputs::text FROM indicator_values")
    finally:
        await conn.close()
    assert stored == '{"hist": "0.0000001", "macd": "0.000000010", "signal": "0.00000000"}'


@pytest.mark.postgres
async def test_the_live_ticker_keeps_the_events_digits(client: TestClient) -> None:
    body = await get(client, f"{BASE}/ticker/binance/BTCUSDT")
    assert (body["last_trade"]["price"], body["last_trade"]["qty"]) == ("64000.01000000", "0.00000010")
    assert body["quote"]["bid_qty"] == "0.00000000" and body["quote"]["ask_qty"] == "0.000000010"
