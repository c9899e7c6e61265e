"""RowWriter on both PostgreSQL servers of the dev stack: idempotence, upsert rules, exact values, partitions or
chunks on demand, writes into compressed chunks (TimescaleDB)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from db_helpers import PgServer
from market_ingestor.config import StorageConfig
from market_ingestor.errors import StorageError, StorageUnavailable
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade
from market_ingestor.sinks.connect import connect
from market_ingestor.sinks.partitions import drop_before
from market_ingestor.sinks.schema import migrate
from market_ingestor.sinks.writer import RowWriter, WriteResult

pytestmark = pytest.mark.postgres

D = Decimal
T0 = 1_709_208_000 * 10**9  # 2024-02-29 12:00:00 UTC
MINUTE = 60 * 10**9


@pytest.fixture(scope="module")
async def writer(database_url: str) -> AsyncIterator[RowWriter]:
    await migrate(database_url)
    writer = RowWriter(database_url, StorageConfig(store_quotes=True))
    await writer.start()
    yield writer
    await writer.close()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)  # NUMERIC read as PostgreSQL prints it
    yield conn
    await conn.close()


def trade(tid: int | str, ts: int, price: str = "100", qty: str = "1", symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, str(tid), D(price), D(qty), "buy", ts, ts + 5)


def kline(
    open_time: int, *, closed: bool, revision: int = 0, count: int = 1, close: str = "100", symbol: str = "ETHUSDT"
) -> Kline:
    c = D(close)
    return Kline(
        "binance", symbol, "1m", open_time, open_time + MINUTE - 1, D("100"), max(c, D("100")), min(c, D("100")), c,
        D(count), D(count) * c, count, D(0), D(0), "1", str(count), c, closed, revision,
    )  # fmt: skip


async def rows(conn: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await conn.fetch(sql, *args)]


async def test_writing_trades_twice_stores_them_once(writer: RowWriter, conn: asyncpg.Connection) -> None:
    batch = [trade(i, T0 + i * 10**6, price=f"100.{i}") for i in range(1, 501)]
    first = await writer.write(batch)
    assert first == WriteResult(trades=500)
    before = await rows(conn, "SELECT * FROM market_trades WHERE symbol = 'BTCUSDT' ORDER BY ts_ns")
    again = await writer.write(batch[::-1] + batch[:10])  # reordered, and duplicates inside one batch
    assert again == WriteResult(unchanged=510)
    assert await rows(conn, "SELECT * FROM market_trades WHERE symbol = 'BTCUSDT' ORDER BY ts_ns") == before
    assert len(before) == 500


async def test_decimals_and_nanoseconds_round_trip_exactly(writer: RowWriter, conn: asyncpg.Connection) -> None:
    values = [
        "0.00000001", "123456789.123456789", "100.10", "1E-18", "98765432109876543210.000000000000000001", "3906250000",
    ]  # fmt: skip
    ts = T0 + 123_456_789  # nanoseconds below the microsecond
    await writer.write([trade(f"x{i}", ts + i, price=v, qty=v, symbol="DECUSDT") for i, v in enumerate(values)])
    got = await rows(conn, "SELECT price, qty, ts_ns, ts FROM market_trades WHERE symbol = 'DECUSDT' ORDER BY trade_id")
    assert [(str(p), str(q)) for p, q, _, _ in got] == [(str(D(v)), str(D(v))) for v in values]
    assert [p.as_tuple() for p, *_ in got] == [D(v).as_tuple() for v in values]  # digits and exponent
    assert [n for _, _, n, _ in got] == [ts + i for i in range(len(values))]
    micros = (ts // 1000) % 1_000_000
    assert {t.microsecond for *_, t in got} == {micros}  # truncated, not rounded


async def test_a_day_without_a_partition_is_created_for_a_backfill(
    pg_server: PgServer, writer: RowWriter, conn: asyncpg.Connection
) -> None:
    old = 946_684_800 * 10**9 + 3 * 3600 * 10**9  # 2000-01-01 03:00 UTC
    result = await writer.write(
        [trade(1, old, symbol="OLDUSDT"), kline(old - old % MINUTE, closed=True, symbol="OLDUSDT")]
    )
    assert result == WriteResult(trades=1, klines=1)
    if pg_server.timescale:  # TimescaleDB makes the chunk itself: one day, as configured
        chunks = await rows(
            conn,
            "SELECT hypertable_name, range_start, range_end FROM timescaledb_information.chunks"
            " WHERE range_start = '2000-01-01 00:00+00' ORDER BY 1",
        )
        day = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2000, 1, 2, tzinfo=UTC))
        assert chunks == [("market_klines", *day), ("market_trades", *day)]
        return
    parts = await rows(conn, "SELECT relname FROM pg_class WHERE relname LIKE '%_p20000101'")
    assert sorted(p for (p,) in parts) == ["market_klines_p20000101", "market_trades_p20000101"]


async def test_kline_upsert_rules(writer: RowWriter, conn: asyncpg.Connection) -> None:
    t = T0 + 10 * MINUTE

    async def stored() -> tuple[Any, ...]:
        (row,) = await rows(
            conn, "SELECT trade_count, closed, revision, close FROM market_klines WHERE symbol = 'ETHUSDT'"
        )
        return row

    assert (await writer.write([kline(t, closed=False, count=3)])).klines == 1
    assert (await writer.write([kline(t, closed=False, count=2)])).unchanged == 1  # older in-progress update
    assert await stored() == (3, False, 0, D(100))
    assert (await writer.write([kline(t, closed=False, count=5)])).klines == 1  # newer in-progress update
    assert (await writer.write([kline(t, closed=True, count=5, close="101")])).klines == 1  # closed wins
    assert await stored() == (5, True, 0, D(101))
    result = await writer.write([kline(t, closed=False, count=9), kline(t, closed=True, count=4, close="99")])
    assert result == WriteResult(unchanged=2)  # neither in-progress nor another closed one replaces it
    assert await stored() == (5, True, 0, D(101))
    assert (await writer.write([kline(t, closed=True, revision=1, count=6, close="102")])).klines == 1
    assert (await writer.write([kline(t, closed=True, revision=0, count=7, close="103")])).unchanged == 1
    assert await stored() == (6, True, 1, D(102))
    # Several updates of one kline in one batch: the best one is kept, in any order.
    t2 = t + MINUTE
    batch = [kline(t2, closed=False, count=2), kline(t2, closed=True, revision=2, count=4), kline(t2, closed=True)]
    assert (await writer.write(batch)).klines == 1
    (row,) = await rows(
        conn, "SELECT revision, trade_count FROM market_klines WHERE open_time = to_timestamp($1)", t2 // 10**9
    )
    assert row == (2, 4)


async def test_indicators_keep_the_highest_revision_with_exact_values(
    writer: RowWriter, conn: asyncpg.Connection
) -> None:
    def value(revision: int, macd: str) -> IndicatorValue:
        return IndicatorValue(
            "binance", "BTCUSDT", "1m", "macd_12_26_9", T0, {"macd": D(macd), "hist": D("-0.5")}, revision
        )

    assert (await writer.write([value(1, "0.000000000000000000000000000001")])).indicators == 1
    assert (await writer.write([value(0, "7")])).unchanged == 1
    assert (await writer.write([value(2, "123456789.123456789")])).indicators == 1
    (row,) = await rows(conn, "SELECT outputs->>'macd', outputs->>'hist', revision FROM indicator_values")
    assert row == ("123456789.123456789", "-0.5", 2)


async def test_quotes_are_stored_once_and_only_when_enabled(
    database_url: str, writer: RowWriter, conn: asyncpg.Connection
) -> None:
    quote = Quote("okx", "BTC-USDT", D("99.5"), D("1"), D("100.5"), D("2"), T0 + 7, T0 + 9, seq=42)
    assert (await writer.write([quote, quote])) == WriteResult(quotes=1, unchanged=1)
    assert await rows(conn, "SELECT bid_price, ask_qty, ts_ns, recv_ts_ns, seq FROM market_quotes") == [
        (D("99.5"), D("2"), T0 + 7, T0 + 9, 42)
    ]
    off = RowWriter(database_url, StorageConfig(store_quotes=False))
    await off.start()
    try:
        assert await off.write([quote]) == WriteResult(quotes_skipped=1)
    finally:
        await off.close()


async def test_a_partition_dropped_under_the_writer_is_made_again(
    pg_server: PgServer, writer: RowWriter, conn: asyncpg.Connection
) -> None:
    day = 1_893_456_000 * 10**9  # 2030-01-01
    assert (await writer.write([trade(1, day, symbol="RETUSDT")])).trades == 1
    if pg_server.timescale:
        dropped = await conn.fetch(
            "SELECT drop_chunks('market_trades', older_than => '2030-01-02 00:00+00'::timestamptz,"
            " newer_than => '2030-01-01 00:00+00'::timestamptz)"
        )
        assert len(dropped) == 1
    else:
        assert await drop_before(conn, "market_trades", datetime(2030, 1, 2, tzinfo=UTC)) != []
    assert (await writer.write([trade(2, day + 10**9, symbol="RETUSDT")])).trades == 1  # its cache said "exists"
    assert await rows(conn, "SELECT trade_id FROM market_trades WHERE symbol = 'RETUSDT'") == [("2",)]


async def test_an_unreachable_database_is_reported_as_unavailable() -> None:
    writer = RowWriter("postgresql://market_ingestor@127.0.0.1:1/nowhere")
    with pytest.raises(StorageUnavailable, match="the database is unavailable"):
        await writer.start()
    with pytest.raises(StorageError, match=r"before start\(\)"):
        await writer.write([trade(1, T0)])


async def test_a_value_the_column_cannot_hold_is_a_storage_error_and_nothing_of_the_batch_is_kept(
    writer: RowWriter, conn: asyncpg.Connection
) -> None:
    bad = Kline(
        "binance", "ERRUSDT", "1m", T0, T0 + MINUTE - 1, D(1), D(1), D(1), D(1), D(0), D(0), 2**40, D(0), D(0), None,
        None, D(1), True, 2**40,
    )  # fmt: skip
    with pytest.raises(StorageError) as caught:
        await writer.write([trade(1, T0, symbol="ERRUSDT"), bad])
    assert not isinstance(caught.value, StorageUnavailable)
    assert await rows(conn, "SELECT * FROM market_trades WHERE symbol = 'ERRUSDT'") == []


async def test_writes_into_a_compressed_chunk_stay_idempotent_and_follow_the_upsert_rules(
    pg_server: PgServer, writer: RowWriter, conn: asyncpg.Connection
) -> None:
    if not pg_server.timescale:
        pytest.skip("TimescaleDB only: plain PostgreSQL has no compression")
    day = 1_262_304_000 * 10**9  # 2010-01-01: a chunk of its own
    trades = [trade(i, day + i * 10**6, price=f"7.{i}", symbol="CMPUSDT") for i in range(1, 101)]
    assert (await writer.write([*trades, kline(day, closed=False, count=3, symbol="CMPUSDT")])).trades == 100
    compressed = await conn.fetch(
        "SELECT compress_chunk(c) FROM show_chunks('market_trades', older_than => '2010-01-02 00:00+00'::timestamptz,"
        " newer_than => '2010-01-01 00:00+00'::timestamptz) c"
        " UNION ALL SELECT compress_chunk(c) FROM show_chunks('market_klines',"
        " older_than => '2010-01-02 00:00+00'::timestamptz, newer_than => '2010-01-01 00:00+00'::timestamptz) c"
    )
    assert len(compressed) == 2
    before = await rows(conn, "SELECT * FROM market_trades WHERE symbol = 'CMPUSDT' ORDER BY ts_ns")
    assert (await writer.write(trades[::-1])) == WriteResult(unchanged=100)
    assert (await writer.write([*trades[:3], trade(101, day + 101 * 10**6, symbol="CMPUSDT")])) == WriteResult(
        trades=1, unchanged=3
    )
    after = await rows(conn, "SELECT * FROM market_trades WHERE symbol = 'CMPUSDT' ORDER BY ts_ns")
    assert after[:100] == before and len(after) == 101
    # A kline in a compressed chunk: the closed one replaces the in-progress one, an older update does not.
    assert (await writer.write([kline(day, closed=True, count=5, close="101", symbol="CMPUSDT")])).klines == 1
    assert (await writer.write([kline(day, closed=False, count=9, symbol="CMPUSDT")])).unchanged == 1
    assert await rows(conn, "SELECT trade_count, closed, close FROM market_klines WHERE symbol = 'CMPUSDT'") == [
        (5, True, D(101))
    ]
