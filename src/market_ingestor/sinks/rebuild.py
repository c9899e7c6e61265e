"""Klines recomputed from the stored trades, in SQL, and compared with the stored klines (``db rebuild-klines``).

The query follows :mod:`market_ingestor.streams.klines` exactly, so a difference means lost, extra or changed
trades or klines, never a different definition:

- windows: ``open_time = ts - (ts - offset) mod length`` on the exact ``ts_ns`` (UTC-aligned, weeks on Mondays);
- open/close and first/last trade id: the earliest and latest trade by ``ts_ns``, ties broken by trade id
  (numerically for numeric ids: shorter first, then bytewise). The stream breaks ties by arrival order, which
  is trade-id order on every exchange we read;
- sums exact in NUMERIC; ``vwap`` by ``market_vwap`` (migration 0002: 34 significant digits, half-even, the
  stream's rounding); zero volume: vwap = close;
- flat klines for windows without trades, from the series' first trade (or the last trade before the range,
  which carries its close in) up to the window of the instrument's last stored trade, or the range's end when
  later trades exist -- the same klines ``market-ingestor klines`` prints for the same trades.

Only windows that are over (end + grace before now) are compared; repairing writes the rebuilt klines as
closed with the stored revision + 1, through :class:`~market_ingestor.sinks.writer.RowWriter`, so consumers
that keep the highest revision take them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from market_ingestor.jsontext import text
from market_ingestor.model import OHLCV_FIELDS, Kline
from market_ingestor.windows import Interval

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# $1 exchange, $2 symbol, $3 interval length ns, $4 offset ns, $5 first window (ns), $6 end (ns, exclusive),
# $7 / $8 the same two as timestamptz (exact: windows start on whole seconds).
REBUILD_SQL = """
WITH bounds AS (
    SELECT
        (SELECT price FROM market_trades
          WHERE exchange = $1 AND symbol = $2 AND ts < $7
          ORDER BY ts DESC, ts_ns DESC, length(trade_id) DESC, trade_id DESC LIMIT 1) AS carried_close,
        EXISTS (SELECT 1 FROM market_trades WHERE exchange = $1 AND symbol = $2 AND ts >= $8) AS later
),
windowed AS (
    SELECT ts_ns - ((ts_ns - $4) % $3 + $3) % $3 AS w, ts_ns, length(trade_id) AS id_len, trade_id, price, qty, side
    FROM market_trades
    WHERE exchange = $1 AND symbol = $2 AND ts >= $7 AND ts < $8
),
agg AS (
    SELECT
        w,
        (array_agg(price ORDER BY ts_ns, id_len, trade_id))[1] AS open,
        max(price) AS high,
        min(price) AS low,
        (array_agg(price ORDER BY ts_ns DESC, id_len DESC, trade_id DESC))[1] AS close,
        sum(qty) AS volume,
        sum(price * qty) AS quote_volume,
        count(*) AS trade_count,
        coalesce(sum(qty) FILTER (WHERE side = 'buy'), 0) AS taker_buy_volume,
        coalesce(sum(price * qty) FILTER (WHERE side = 'buy'), 0) AS taker_buy_quote_volume,
        (array_agg(trade_id ORDER BY ts_ns, id_len, trade_id))[1] AS first_trade_id,
        (array_agg(trade_id ORDER BY ts_ns DESC, id_len DESC, trade_id DESC))[1] AS last_trade_id
    FROM windowed
    GROUP BY w
),
span AS (
    SELECT
        CASE WHEN b.carried_close IS NOT NULL THEN $5::bigint ELSE min(a.w) END AS first_w,
        CASE WHEN b.later THEN $6::bigint - $3 ELSE max(a.w) END AS last_w,
        b.carried_close
    FROM bounds b LEFT JOIN agg a ON true
    GROUP BY b.carried_close, b.later
),
series AS (
    SELECT w, s.carried_close FROM span s, generate_series(s.first_w, s.last_w, $3::bigint) AS w
    WHERE s.first_w IS NOT NULL AND s.last_w IS NOT NULL
),
grouped AS (
    SELECT s.w, s.carried_close, a.open, a.high, a.low, a.close, a.volume, a.quote_volume, a.trade_count,
           a.taker_buy_volume, a.taker_buy_quote_volume, a.first_trade_id, a.last_trade_id,
           count(a.w) OVER (ORDER BY s.w) AS grp
    FROM series s LEFT JOIN agg a ON a.w = s.w
),
filled AS (
    SELECT
        g.*,
        CASE WHEN g.grp = 0 THEN g.carried_close
             ELSE first_value(g.close) OVER (PARTITION BY g.grp ORDER BY g.w) END AS last_close
    FROM grouped g
)
SELECT
    f.w AS open_time,
    coalesce(f.open, f.last_close) AS open,
    coalesce(f.high, f.last_close) AS high,
    coalesce(f.low, f.last_close) AS low,
    f.last_close AS close,
    coalesce(f.volume, 0) AS volume,
    coalesce(f.quote_volume, 0) AS quote_volume,
    coalesce(f.trade_count, 0) AS trade_count,
    coalesce(f.taker_buy_volume, 0) AS taker_buy_volume,
    coalesce(f.taker_buy_quote_volume, 0) AS taker_buy_quote_volume,
    f.first_trade_id,
    f.last_trade_id,
    market_vwap(coalesce(f.quote_volume, 0), coalesce(f.volume, 0), f.last_close) AS vwap
FROM filled f
ORDER BY f.w
"""

STORED_SQL = """
SELECT (extract(epoch FROM open_time) * 1000000)::bigint * 1000 AS open_time, open, high, low, close, volume,
       quote_volume, trade_count, taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, vwap,
       closed, revision
FROM market_klines
WHERE exchange = $1 AND symbol = $2 AND interval = $3 AND open_time >= $4 AND open_time < $5
ORDER BY open_time
"""

COMPARED = (*OHLCV_FIELDS, "trade_count", "taker_buy_volume", "taker_buy_quote_volume", "first_trade_id",
            "last_trade_id", "vwap")  # fmt: skip


Fields = dict[str, tuple[str | None, str | None]]


class Difference(msgspec.Struct, frozen=True):
    """One window where the stored kline and the trades disagree."""

    open_time: int
    kind: str  # "missing": no stored kline; "extra": a stored kline with trades the table lacks; "different"
    fields: Fields  # field -> (stored, rebuilt), exact text


class Report(msgspec.Struct):
    rebuilt: list[Kline]
    differences: list[Difference]
    compared: int  # windows compared (over and in the rebuilt span)
    not_over: int  # windows skipped: still open at ``now``
    stored_revisions: dict[int, int]  # open_time -> revision of the stored klines in the range

    def repairs(self) -> list[Kline]:
        """The rebuilt klines for the "missing" and "different" windows, each one revision above the stored one.
        ("extra" ones are only reported: the trades may be what is missing, so nothing is deleted.)"""
        by_time = {k.open_time: k for k in self.rebuilt}
        out = []
        for difference in self.differences:
            kline = by_time.get(difference.open_time)
            if kline is not None:
                revision = self.stored_revisions.get(difference.open_time, -1) + 1
                out.append(msgspec.structs.replace(kline, revision=revision))
        return out


def _text(value: Any) -> str | None:
    return None if value is None else text(value)


def _timestamptz(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


async def rebuild_klines(
    conn: asyncpg.Connection, exchange: str, symbol: str, interval: Interval, from_ns: int, to_ns: int
) -> list[Kline]:
    """The closed klines of [from_ns, to_ns) (aligned outward to whole windows) from the stored trades."""
    first = interval.open_time(from_ns)
    end = interval.open_time(to_ns - 1) + interval.ns
    start_ts, end_ts = _timestamptz(first), _timestamptz(end)
    rows = await conn.fetch(
        REBUILD_SQL, exchange, symbol, interval.ns, interval.offset_ns, first, end, start_ts, end_ts
    )
    return [
        Kline(
            exchange=exchange,
            symbol=symbol,
            interval=interval.name,
            open_time=row["open_time"],
            close_time=interval.close_time(row["open_time"]),
            open=row["open"],
            high=row["high"],
            low=row["low"],
            close=row["close"],
            volume=row["volume"],
            quote_volume=row["quote_volume"],
            trade_count=row["trade_count"],
            taker_buy_volume=row["taker_buy_volume"],
            taker_buy_quote_volume=row["taker_buy_quote_volume"],
            first_trade_id=row["first_trade_id"],
            last_trade_id=row["last_trade_id"],
            vwap=row["vwap"],
            closed=True,
        )
        for row in rows
    ]


async def check_klines(
    conn: asyncpg.Connection,
    exchange: str,
    symbol: str,
    interval: Interval,
    from_ns: int,
    to_ns: int,
    *,
    now_ns: int,
    grace_ns: int,
) -> Report:
    """Rebuilds [from_ns, to_ns) and compares it with the stored klines (numerically; the text is reported)."""
    rebuilt = await rebuild_klines(conn, exchange, symbol, interval, from_ns, to_ns)
    first = interval.open_time(from_ns)
    end = interval.open_time(to_ns - 1) + interval.ns
    stored = {
        row["open_time"]: row
        for row in await conn.fetch(STORED_SQL, exchange, symbol, interval.name, _timestamptz(first), _timestamptz(end))
    }

    def over(open_time: int) -> bool:
        return open_time + interval.ns + grace_ns <= now_ns

    differences: list[Difference] = []
    compared = not_over = 0
    for kline in rebuilt:
        if not over(kline.open_time):
            not_over += 1
            continue
        compared += 1
        row = stored.get(kline.open_time)
        if row is None:
            fields: Fields = {name: (None, _text(getattr(kline, name))) for name in COMPARED}
            differences.append(Difference(kline.open_time, "missing", fields))
            continue
        fields = {
            name: (_text(row[name]), _text(getattr(kline, name)))
            for name in COMPARED
            if row[name] != getattr(kline, name)  # Decimal == is numeric: 2.5 == 2.50
        }
        if fields:
            differences.append(Difference(kline.open_time, "different", fields))
    span = {k.open_time for k in rebuilt}
    for open_time, row in stored.items():
        # Outside the rebuilt span a stored flat kline may be right (time passed without trades), but one that
        # counts trades names trades this table does not have.
        if open_time not in span and row["trade_count"] > 0 and over(open_time):
            differences.append(Difference(open_time, "extra", {name: (_text(row[name]), None) for name in COMPARED}))
    differences.sort(key=lambda d: d.open_time)
    revisions = {open_time: row["revision"] for open_time, row in stored.items()}
    return Report(rebuilt, differences, compared, not_over, revisions)
