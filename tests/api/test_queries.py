"""The query API's database endpoints on a real server and the dev stack's PostgreSQL: exact decimal strings,
pagination that returns every row exactly once, every validation error naming its parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from decimal import Decimal as D
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from api_helpers import serve, write

from market_ingestor.api.ticker_state import MemoryTicker, TickerState
from market_ingestor.config import ApiConfig, Config, DatabaseConfig, StreamsConfig
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade

pytestmark = pytest.mark.postgres

DAY_MS = 1_709_251_200_000
DAY_NS = DAY_MS * 1_000_000
MINUTE_NS = 60_000_000_000
BASE = "/api/v1"
INDICATORS = ["rsi_14", "macd_12_26_9"]


def kline(n: int) -> Kline:
    """1m kline number n of the day: prices with trailing zeros and long fractions, a flat (tradeless) kline
    every 100th, the last one still open."""
    price = Decimal("42000.10") + Decimal("0.01") * n
    flat = n % 100 == 99
    open_time = DAY_NS + n * MINUTE_NS
    return Kline(
        "binance", "BTCUSDT", "1m", open_time, open_time + MINUTE_NS - 1,
        price, price + Decimal("1.5"), price - Decimal("0.25"), price + Decimal("0.05"),
        Decimal(0) if flat else Decimal("1.50000000"), Decimal(0) if flat else Decimal("63000.123456789012345678"),
        0 if flat else 10 + n, Decimal("0.75"), Decimal("31500.0617"),
        None if flat else str(n * 100), None if flat else str(n * 100 + 9),
        price + Decimal("0.000000001"), n != 1439, n % 3,
    )  # fmt: skip


def trade(n: int) -> Trade:
    """Trades in groups of five sharing one nanosecond timestamp: pagination must not split ties wrongly."""
    ts = DAY_NS + (n // 5) * 1_000_000 + 123_456
    side = "buy" if n % 2 else "sell"
    return Trade("binance", "BTCUSDT", f"{n:06d}", Decimal("42000.123456789") + n, Decimal("0.00001000"), side, ts, ts)


def indicator(n: int, name: str) -> IndicatorValue:
    if name == "rsi_14":
        values = {"rsi": Decimal("55.123456789") + n}
    else:
        values = {"macd": Decimal("1.50"), "signal": Decimal("-0.25"), "hist": Decimal("1.75")}
    return IndicatorValue("binance", "BTCUSDT", "1m", name, DAY_NS + n * MINUTE_NS, values, n % 2)


@pytest.fixture(scope="module")
async def client(database_url: str) -> AsyncIterator[TestClient]:
    await write(
        database_url,
        [
            *(kline(n) for n in range(1440)),
            *(trade(n) for n in range(253)),
            *(indicator(n, name) for n in range(120) for name in INDICATORS),
        ],
    )
    config = Config(
        database=DatabaseConfig(url=database_url),
        streams=StreamsConfig(intervals=["1m", "5m"], indicators=INDICATORS),
        api=ApiConfig(auth_enabled=False, default_page_size=100, max_page_size=2000, max_tickers=3),
    )
    live = MemoryTicker(
        {
            "okx.ETHUSDT": TickerState(
                Trade("okx", "ETHUSDT", "77", D("3500.010"), D("0.5000"), "buy", 1_709_251_200_123_456_789, 0),
                Quote("okx", "ETHUSDT", D("3500.00"), D("1.2"), D("3500.02"), D("0.3"), 1_709_251_201_000_000_000, 0),
            )
        }
    )  # fmt: skip
    async with serve(config, live) as (test_client, _):
        yield test_client


async def get(client: TestClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    body = await response.json()
    assert response.status == status, body
    assert response.content_type == "application/json"
    return body


async def walk(client: TestClient, path: str) -> list[dict[str, Any]]:
    """Every page of a paginated request, following `next` until it is null."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        body = await get(client, path + (f"&cursor={cursor}" if cursor else ""))
        rows.extend(body["data"])
        cursor = body["next"]
        if cursor is None:
            return rows
    raise AssertionError("pagination never ended")


async def test_a_kline_comes_with_exact_decimal_strings_and_both_time_forms(client):
    body = await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&limit=2")
    assert body["exchange"] == "binance" and body["symbol"] == "BTCUSDT" and body["interval"] == "1m"
    assert body["data"][0] == {
        "open_time": "2024-03-01T00:00:00.000000000Z", "open_time_ms": DAY_MS,
        "close_time": "2024-03-01T00:00:59.999999999Z", "close_time_ms": DAY_MS + 59_999,
        "open": "42000.10", "high": "42001.60", "low": "41999.85", "close": "42000.15",
        "volume": "1.50000000", "quote_volume": "63000.123456789012345678", "trade_count": 10,
        "taker_buy_volume": "0.75", "taker_buy_quote_volume": "31500.0617",
        "first_trade_id": "0", "last_trade_id": "9", "vwap": "42000.100000001", "closed": True, "revision": 0,
    }  # fmt: skip
    assert body["data"][1]["open"] == "42000.11"
    assert body["next"] is not None


async def test_a_full_day_of_klines_in_one_page(client):
    body = await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&limit=1440&from={DAY_MS}")
    assert len(body["data"]) == 1440
    assert body["next"] is None
    flat, last = body["data"][99], body["data"][-1]
    assert (flat["trade_count"], flat["first_trade_id"], flat["volume"]) == (0, None, "0")
    assert (last["closed"], last["open"], last["open_time_ms"]) == (False, "42014.49", DAY_MS + 1439 * 60_000)


async def test_kline_pages_return_every_row_exactly_once(client):
    rows = await walk(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&limit=97")
    assert [row["open_time_ms"] for row in rows] == [DAY_MS + n * 60_000 for n in range(1440)]


async def test_a_time_window_is_inclusive_at_from_and_exclusive_at_to_in_both_time_forms(client):
    by_ms = await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&from={DAY_MS + 60_000}&to={DAY_MS + 180_000}")
    by_rfc = await get(
        client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&from=2024-03-01T01:01:00%2B01:00&to=2024-03-01T00:03:00Z"
    )
    assert [row["open_time_ms"] for row in by_ms["data"]] == [DAY_MS + 60_000, DAY_MS + 120_000]
    assert by_rfc == by_ms
    # A microsecond after an open time excludes that kline (times compare at the database's microseconds).
    later = await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m&from=2024-03-01T00:01:00.000001Z&limit=1")
    assert later["data"][0]["open_time_ms"] == DAY_MS + 120_000


async def test_an_interval_without_rows_is_an_empty_page(client):
    assert await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=5m") == {
        "exchange": "binance", "symbol": "BTCUSDT", "interval": "5m", "data": [], "next": None,
    }  # fmt: skip


async def test_trades_with_equal_timestamps_are_paginated_without_loss_or_repeat(client):
    everything = await get(client, f"{BASE}/trades/binance/BTCUSDT?limit=2000")
    assert len(everything["data"]) == 253 and everything["next"] is None
    assert everything["data"][7] == {
        "trade_id": "000007", "time": "2024-03-01T00:00:00.001123456Z", "time_ms": DAY_MS + 1,
        "price": "42007.123456789", "qty": "0.00001000", "side": "buy",
    }  # fmt: skip
    for page_size in (1, 3, 5, 7):
        rows = await walk(client, f"{BASE}/trades/binance/BTCUSDT?limit={page_size}")
        assert rows == everything["data"], page_size
    window = await walk(client, f"{BASE}/trades/binance/BTCUSDT?limit=4&from={DAY_MS + 10}&to={DAY_MS + 20}")
    assert [row["trade_id"] for row in window] == [f"{n:06d}" for n in range(50, 100)]


async def test_indicator_values_keep_their_exact_decimals(client):
    body = await get(client, f"{BASE}/indicators/macd_12_26_9/binance/BTCUSDT?interval=1m&limit=1")
    assert body["name"] == "macd_12_26_9" and body["interval"] == "1m"
    assert body["data"] == [
        {"open_time": "2024-03-01T00:00:00.000000000Z", "open_time_ms": DAY_MS, "revision": 0,
         "values": {"macd": "1.50", "signal": "-0.25", "hist": "1.75"}}
    ]  # fmt: skip
    rows = await walk(client, f"{BASE}/indicators/rsi_14/binance/BTCUSDT?interval=1m&limit=50")
    assert [row["values"]["rsi"] for row in rows] == [f"{Decimal('55.123456789') + n}" for n in range(120)]


async def test_symbols_lists_stored_and_live_instruments(client):
    body = await get(client, f"{BASE}/symbols")
    assert body["data"] == [
        {"exchange": "binance", "symbol": "BTCUSDT", "id": "binance.BTCUSDT", "stored": True, "live": False},
        {"exchange": "okx", "symbol": "ETHUSDT", "id": "okx.ETHUSDT", "stored": False, "live": True},
    ]
    assert [s["id"] for s in (await get(client, f"{BASE}/symbols?exchange=okx"))["data"]] == ["okx.ETHUSDT"]


OKX_TICKER = {
    "exchange": "okx", "symbol": "ETHUSDT",
    "last_trade": {"trade_id": "77", "price": "3500.010", "qty": "0.5000", "side": "buy",
                   "time": "2024-03-01T00:00:00.123456789Z", "time_ms": DAY_MS + 123},
    "quote": {"bid_price": "3500.00", "bid_qty": "1.2", "ask_price": "3500.02", "ask_qty": "0.3",
              "time": "2024-03-01T00:00:01.000000000Z", "time_ms": DAY_MS + 1000},
}  # fmt: skip


async def test_ticker_and_tickers(client):
    assert await get(client, f"{BASE}/ticker/okx/ethusdt") == OKX_TICKER
    body = await get(client, f"{BASE}/tickers?symbols=okx.ETHUSDT,binance.BTCUSDT")
    # A stored instrument without live data yet: known, with nothing to show.
    assert body["data"] == [OKX_TICKER, {"exchange": "binance", "symbol": "BTCUSDT", "last_trade": None, "quote": None}]


async def test_health_and_readiness(client):
    assert await get(client, "/healthz") == {"status": "ok"}
    assert await get(client, "/readyz") == {"ready": True, "database": "ok", "ticker": "recovered"}


async def test_readiness_fails_while_the_database_is_unreachable():
    config = Config(
        database=DatabaseConfig(url="postgresql://nobody@127.0.0.1:9/none"), api=ApiConfig(auth_enabled=False)
    )
    async with serve(config) as (client, _):
        body = await get(client, "/readyz", 503)
        assert body["ready"] is False and body["ticker"] == "recovered"
        assert "the database is unavailable" in body["database"]
        error = await get(client, f"{BASE}/klines/binance/BTCUSDT?interval=1m", 503)
        assert "the database is unavailable" in error["error"]


K = f"{BASE}/klines/binance/BTCUSDT?interval=1m"


@pytest.mark.parametrize(
    ("path", "status", "parameter", "fragment"),
    [
        (f"{BASE}/klines/binance/BTCUSDT?interval=7m", 400, "interval", "unknown interval '7m'"),
        (f"{BASE}/klines/binance/BTCUSDT", 400, "interval", "interval is required"),
        (f"{K}&from=2024-03-02T00:00:00Z&to=2024-03-01T00:00:00Z", 400, "to", "inverted range"),
        (f"{K}&from={DAY_MS}&to={DAY_MS}", 400, "to", "inverted range"),
        (f"{K}&limit=0", 400, "limit", "out of range"),
        (f"{K}&limit=2001", 400, "limit", "1 to 2000"),
        (f"{K}&limit=ten", 400, "limit", "whole number"),
        (f"{K}&from=yesterday", 400, "from", "malformed time 'yesterday'"),
        (f"{K}&from=2024-13-01T00:00:00Z", 400, "from", "malformed time"),
        (f"{K}&to=2024-03-01T00:00:00", 400, "to", "with an offset"),
        (f"{K}&to=99999999999999999", 400, "to", "malformed time"),
        (f"{K}&cursor=%%%", 400, "cursor", "malformed cursor"),
        (f"{K}&foo=1", 400, "foo", "unknown query parameter 'foo'"),
        (f"{K}&limit=1&limit=2", 400, "limit", "more than once"),
        (f"{BASE}/klines/binanse/BTCUSDT?interval=1m", 400, "exchange", "unknown exchange 'binanse'"),
        (f"{BASE}/klines/binance/NOPEUSDT?interval=1m", 404, "symbol", "unknown symbol binance.NOPEUSDT"),
        (f"{BASE}/trades/binance/BTCUSDT?limit=-1", 400, "limit", "whole number"),
        (f"{BASE}/trades/okx/XRPUSDT", 404, "symbol", "unknown symbol okx.XRPUSDT"),
        (f"{BASE}/indicators/rsi_99/binance/BTCUSDT?interval=1m", 404, "name", "unknown indicator 'rsi_99'"),
        (f"{BASE}/indicators/rsi_14/binance/BTCUSDT?interval=2h", 400, "interval", "unknown interval"),
        (f"{BASE}/ticker/kraken/BTCUSD", 404, "symbol", "unknown symbol kraken.BTCUSD"),
        (f"{BASE}/ticker/nyse/IBM", 400, "exchange", "unknown exchange 'nyse'"),
        (f"{BASE}/tickers", 400, "symbols", "symbols is required"),
        (f"{BASE}/tickers?symbols=binance", 400, "symbols", "malformed symbols entry 'binance'"),
        (f"{BASE}/tickers?symbols=nyse.IBM", 400, "symbols", "unknown exchange 'nyse'"),
        (f"{BASE}/tickers?symbols=okx.ETHUSDT,okx.NOPE", 404, "symbols", "unknown symbol okx.NOPE"),
        (f"{BASE}/tickers?symbols=okx.A,okx.B,okx.C,okx.D", 400, "symbols", "too many symbols: 4, at most 3"),
        (f"{BASE}/symbols?exchange=nyse", 400, "exchange", "unknown exchange 'nyse'"),
        (f"{BASE}/nothing", 404, None, "Not Found"),
    ],
)
async def test_bad_requests_name_what_is_wrong(client, path, status, parameter, fragment):
    body = await get(client, path, status)
    assert body["parameter"] == parameter
    assert fragment in body["error"]


async def test_a_cursor_of_another_endpoint_is_refused(client):
    page = await get(client, f"{BASE}/trades/binance/BTCUSDT?limit=1")
    body = await get(client, f"{K}&cursor={page['next']}", 400)
    assert body == {"error": "this cursor belongs to a trades request, not klines", "parameter": "cursor"}
