"""Stored 1m klines against TimescaleDB's own aggregate of the stored trades (``db check-buckets``).

A second check beside ``db rebuild-klines``, built from different parts: windows by TimescaleDB's
``time_bucket('1 minute', ts)`` (not the stream's arithmetic on ``ts_ns``), open and close by its ``first`` /
``last`` aggregates. It is the query a continuous aggregate over ``market_trades`` would run::

    SELECT time_bucket('1 minute', ts) AS minute, first(price, ts_ns) AS open, max(price) AS high,
           min(price) AS low, last(price, ts_ns) AS close, sum(qty) AS volume, sum(price * qty) AS quote_volume,
           count(*) AS trade_count
    FROM market_trades WHERE exchange = 'binance' AND symbol = 'BTCUSDT' GROUP BY 1 ORDER BY 1;

Trades sharing the first (last) nanosecond of a minute leave the open (close) ambiguous: ``first`` picks any of
them, the stream the lowest trade id. So a stored open or close counts as equal when it is the price of any
trade at that nanosecond. Flat klines (no trades) have nothing to compare with and are skipped; only minutes
over before ``until_ns`` are compared. TimescaleDB mode only (the functions come with the extension).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from market_ingestor.jsontext import text

# $1 exchange, $2 symbol, $3 from, $4 to (timestamptz, to exclusive)
BUCKETS_SQL = """
WITH b AS (
    SELECT time_bucket('1 minute', ts) AS minute, ts_ns, price, qty, side,
           min(ts_ns) OVER w AS first_ns, max(ts_ns) OVER w AS last_ns
    FROM market_trades
    WHERE exchange = $1 AND symbol = $2 AND ts >= $3 AND ts < $4
    WINDOW w AS (PARTITION BY time_bucket('1 minute', ts))
),
agg AS (
    SELECT minute, first(price, ts_ns) AS open, max(price) AS high, min(price) AS low, last(price, ts_ns) AS close,
           sum(qty) AS volume, sum(price * qty) AS quote_volume, count(*) AS trade_count,
           coalesce(sum(qty) FILTER (WHERE side = 'buy'), 0) AS taker_buy_volume,
           array_agg(DISTINCT price) FILTER (WHERE ts_ns = first_ns) AS opens,
           array_agg(DISTINCT price) FILTER (WHERE ts_ns = last_ns) AS closes
    FROM b GROUP BY minute
),
k AS (
    SELECT open_time, open, high, low, close, volume, quote_volume, trade_count, taker_buy_volume
    FROM market_klines
    WHERE exchange = $1 AND symbol = $2 AND interval = '1m' AND open_time >= $3 AND open_time < $4
      AND trade_count > 0
)
SELECT coalesce(agg.minute, k.open_time) AS minute, agg.open AS b_open, agg.high AS b_high, agg.low AS b_low,
       agg.close AS b_close, agg.volume AS b_volume, agg.quote_volume AS b_quote_volume,
       agg.trade_count AS b_trade_count, agg.taker_buy_volume AS b_taker_buy_volume, agg.opens, agg.closes,
       k.open, k.high, k.low, k.close, k.volume, k.quote_volume, k.trade_count, k.taker_buy_volume
FROM agg FULL JOIN k ON k.open_time = agg.minute
ORDER BY 1
"""

_EXACT = ("high", "low", "volume", "quote_volume", "trade_count", "taker_buy_volume")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BucketDifference(msgspec.Struct, frozen=True):
    minute: str  # RFC 3339
    kind: str  # "missing" (trades, no kline), "extra" (a kline counting trades that are not stored), "different"
    fields: dict[str, tuple[str, str]] = {}  # field -> (stored kline, bucket aggregate)


class BucketReport(msgspec.Struct):
    compared: int = 0
    differences: list[BucketDifference] = msgspec.field(default_factory=list)


async def check_buckets(
    conn: asyncpg.Connection, exchange: str, symbol: str, from_ns: int, to_ns: int, until_ns: int
) -> BucketReport:
    """Compares the minutes in [from, min(to, until)) (``until_ns``: the first minute not over yet)."""
    end_ns = min(to_ns, until_ns)
    report = BucketReport()
    if end_ns <= from_ns:
        return report
    rows = await conn.fetch(BUCKETS_SQL, exchange, symbol, _at(from_ns), _at(end_ns))
    for row in rows:
        report.compared += 1
        minute = row["minute"].astimezone(UTC).isoformat().replace("+00:00", "Z")
        if row["trade_count"] is None:
            report.differences.append(BucketDifference(minute, "missing"))
        elif row["b_trade_count"] is None:
            report.differences.append(BucketDifference(minute, "extra"))
        else:
            fields = _compare(row)
            if fields:
                report.differences.append(BucketDifference(minute, "different", fields))
    return report


def _compare(row: asyncpg.Record) -> dict[str, tuple[str, str]]:
    fields: dict[str, tuple[str, str]] = {}
    for name, candidates in (("open", row["opens"]), ("close", row["closes"])):
        if row[name] not in candidates:
            fields[name] = (text(row[name]), text(row[f"b_{name}"]))
    for name in _EXACT:  # by value: 1.50 equals 1.5
        stored: Any = row[name]
        bucket: Any = row[f"b_{name}"]
        if stored != bucket:
            fields[name] = (text(stored), text(bucket))
    return fields


def _at(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)
