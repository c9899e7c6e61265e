"""The query API's reads from PostgreSQL/TimescaleDB: one asyncpg pool, keyset-paginated queries.

Amounts are selected as ``numeric::text``: PostgreSQL's exact text of the value, decoded by asyncpg's C text
codec (never a float, and no Decimal built only to be turned back into a string). The pool's connections
decode ``timestamptz`` as PostgreSQL's integer microseconds, which skips datetime objects on the hot path.
Every query is a prepared statement (asyncpg caches them per connection) that walks an index in order and stops
after ``limit + 1`` rows: the extra row only says whether there is a next page.

The pool opens connections on demand, so the API starts (and answers ``/healthz``) while the database is
down; a failed query raises :class:`~market_ingestor.errors.StorageError`, answered with 503.

Time bounds are compared at the database's precision: a bound is truncated to the microsecond, as stored times
are (trades also keep their exact nanoseconds in ``ts_ns``, which is what the API shows).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from market_ingestor.api.params import Cursor, TimeRange, to_pg
from market_ingestor.errors import StorageError
from market_ingestor.sinks.connect import storage_errors

_KLINES = """
SELECT open_time, open::text, high::text, low::text, close::text, volume::text, quote_volume::text, trade_count,
       taker_buy_volume::text, taker_buy_quote_volume::text, first_trade_id, last_trade_id, vwap::text, closed, revision
FROM market_klines
WHERE exchange = $1 AND symbol = $2 AND interval = $3 AND open_time >= $4 AND open_time < $5
ORDER BY open_time
LIMIT $6
"""

_TRADES = """
SELECT ts, trade_id, price::text, qty::text, side, ts_ns
FROM market_trades
WHERE exchange = $1 AND symbol = $2 AND ts >= $3 AND ts < $4 AND (ts, trade_id) > ($5, $6)
ORDER BY ts, trade_id
LIMIT $7
"""

_INDICATORS = """
SELECT open_time, outputs::text, revision
FROM indicator_values
WHERE exchange = $1 AND symbol = $2 AND interval = $3 AND name = $4 AND open_time >= $5 AND open_time < $6
ORDER BY open_time
LIMIT $7
"""

# A loose index scan: one index probe per distinct (exchange, symbol) instead of reading every row.
_DISTINCT_INSTRUMENTS = """
WITH RECURSIVE found AS (
    (SELECT exchange, symbol FROM {table} ORDER BY exchange, symbol LIMIT 1)
    UNION ALL
    SELECT next.exchange, next.symbol FROM found, LATERAL (
        SELECT exchange, symbol FROM {table} WHERE (exchange, symbol) > (found.exchange, found.symbol)
        ORDER BY exchange, symbol LIMIT 1
    ) AS next
)
SELECT exchange, symbol FROM found
"""


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=lambda v: v, decoder=lambda v: v, format="tuple"
    )


class Store:
    def __init__(self, database_url: str, pool_size: int = 10, timeout_s: float = 10.0) -> None:  # float-ok
        self._url = database_url
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url, min_size=0, max_size=self._pool_size, init=_init_connection, command_timeout=self._timeout_s
        )

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError("the query API's database pool is not started")
        return self._pool

    async def _fetch(self, doing: str, query: str, *args: Any) -> list[asyncpg.Record]:
        with storage_errors(doing):
            return await self.pool.fetch(query, *args, timeout=self._timeout_s)

    async def ping(self) -> None:
        await self._fetch("checking the database", "SELECT 1")

    async def klines(
        self, exchange: str, symbol: str, interval: str, window: TimeRange, after: Cursor | None, limit: int
    ) -> list[asyncpg.Record]:
        lower = to_pg(window.start_ns) if after is None else max(to_pg(window.start_ns), (after[0] + 1,))
        return await self._fetch(
            "reading klines", _KLINES, exchange, symbol, interval, lower, to_pg(window.end_ns), limit
        )

    async def trades(
        self, exchange: str, symbol: str, window: TimeRange, after: Cursor | None, limit: int
    ) -> list[asyncpg.Record]:
        # Without a cursor, (ts, trade_id) > (from - 1 µs, '') holds for every row in the window.
        after_us, after_id = after if after is not None else (to_pg(window.start_ns)[0] - 1, "")
        args = (exchange, symbol, to_pg(window.start_ns), to_pg(window.end_ns), (after_us,), after_id, limit)
        return await self._fetch("reading trades", _TRADES, *args)

    async def indicators(
        self, exchange: str, symbol: str, interval: str, name: str, window: TimeRange, after: Cursor | None, limit: int
    ) -> list[asyncpg.Record]:
        lower = to_pg(window.start_ns) if after is None else max(to_pg(window.start_ns), (after[0] + 1,))
        return await self._fetch(
            "reading indicator values",
            _INDICATORS,
            exchange,
            symbol,
            interval,
            name,
            lower,
            to_pg(window.end_ns),
            limit,
        )

    async def instruments(self) -> set[tuple[str, str]]:
        """Every (exchange, symbol) with stored klines or trades."""
        found: set[tuple[str, str]] = set()
        for table in ("market_klines", "market_trades"):
            rows = await self._fetch("listing instruments", _DISTINCT_INSTRUMENTS.format(table=table))
            found.update((row["exchange"], row["symbol"]) for row in rows)
        return found
