"""RowWriter: batches of model events -> PostgreSQL/TimescaleDB, one transaction per batch, idempotent.

API::

    writer = RowWriter(database_url, settings)   # no I/O
    await writer.start()                          # the pool; fails with StorageError if not migrated
    result = await writer.write(events)           # Trade | Kline | IndicatorValue | Quote, any mix
    await writer.maintain()                       # partitions ahead, retention (plain PostgreSQL); periodically
    await writer.close()

Per batch and table: binary COPY (``copy_records_to_table``) into a per-connection temporary staging table,
then one ``INSERT ... SELECT ... ON CONFLICT`` into the real table; all tables of a batch in one transaction, so
a batch is stored entirely or not at all and writing it again changes nothing:

- trades and quotes: ``DO NOTHING`` (an event is stored once);
- klines: the highest ``revision`` wins. At the same revision a closed kline replaces an in-progress one, and
  an in-progress one replaces an older in-progress one only if it has *more trades*: trades only ever add to an
  open window, so the count orders its updates whatever order they arrive in, and an equal count is the same
  kline. An in-progress update never overwrites a closed kline of the same revision; two closed klines of the
  same revision are the same kline, the stored one stays;
- indicator values: the highest ``revision`` wins.

Several rows for one key inside a batch are reduced to the winner first (``DISTINCT ON``), as one
``INSERT ... ON CONFLICT DO UPDATE`` may not touch a row twice.

Speed (``bench/sink.py --ladder`` measures each step): NUMERIC columns are staged as text (exact, and far
cheaper for this process than asyncpg's binary Decimal encoder); trades and quotes first try a plain
``INSERT ... SELECT`` in a savepoint, which costs about 60% of the ``ON CONFLICT`` form, and run the
``ON CONFLICT DO NOTHING`` form only if that hits a duplicate (a re-delivered batch fails on its first row).

Errors: :class:`StorageUnavailable` when a retry may succeed (server down or restarting, connection lost,
serialization conflict) -- the batch may or may not have been committed when the connection broke, and writing
it again is harmless; :class:`StorageError` when the batch itself is refused (e.g. a value out of range).

Values: Decimal -> NUMERIC exactly; nanosecond times -> timestamptz truncated to the microsecond (by an integer
codec on the writer's connections, no datetime objects), and the exact ns in ``ts_ns`` where a value can
carry nanoseconds (trades, quotes). Plain PostgreSQL: a batch's days get their partitions first
(:func:`.partitions.ensure_days`), so old backfill dates work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec

from market_ingestor.config import StorageConfig
from market_ingestor.errors import StorageError
from market_ingestor.jsontext import JsonEncoder
from market_ingestor.model import OHLCV_FIELDS, IndicatorValue, Kline, Quote, Trade
from market_ingestor.sinks.connect import storage_errors
from market_ingestor.sinks.partitions import bucket_of, ensure_days
from market_ingestor.sinks.schema import SchemaMode, maintain, read_mode

# PostgreSQL counts timestamps in microseconds from 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
_NO_PARTITION = "no partition of relation"


def _ns_to_pg(ns: int) -> tuple[int]:
    return (ns // 1000 - _PG_EPOCH_US,)


def _pg_to_ns(value: tuple[int]) -> int:
    return (value[0] + _PG_EPOCH_US) * 1000


class WriteResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one batch changed. ``unchanged``: events already stored or superseded (duplicates, older revisions)."""

    trades: int = 0  # rows inserted
    klines: int = 0  # rows inserted or replaced
    indicators: int = 0  # rows inserted or replaced
    quotes: int = 0  # rows inserted
    unchanged: int = 0
    quotes_skipped: int = 0  # quotes given while storage.store_quotes is off

    @property
    def changed(self) -> int:
        return self.trades + self.klines + self.indicators + self.quotes


class _Table(msgspec.Struct, frozen=True):
    """One target table: its staging table's columns and types, how an event becomes a record, the upsert."""

    name: str
    stage: str
    columns: str  # the staging table's "name type, ..." (the target's columns of the same names)
    record: Callable[[Any], tuple[Any, ...]]
    time_ns: Callable[[Any], int]  # the partition column's value
    upsert: str

    def create_stage(self) -> str:
        # NUMERIC columns are staged as text: asyncpg's binary Decimal encoder costs ~1.6 us per value in this
        # process, str(Decimal) ~0.2 us, and the server's numeric parse is exact and cheap.
        columns = self.columns.replace(" numeric", " text")
        return f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.stage} ({columns}) ON COMMIT DELETE ROWS"

    @property
    def select_list(self) -> str:
        return ", ".join(
            f"{column.split()[0]}::numeric" if column.split()[1] == "numeric" else column.split()[0]
            for column in self.columns.split(",")
        )

    @property
    def column_names(self) -> list[str]:
        return [column.split()[0] for column in self.columns.split(",")]


_json = JsonEncoder()  # indicator values: jsonb strings in the exchange's plain digits


def _trade(e: Trade) -> tuple[Any, ...]:
    return (e.exchange, e.symbol, e.trade_id, e.ts, e.ts, str(e.price), str(e.qty), e.side)


def _kline(k: Kline) -> tuple[Any, ...]:
    return (
        k.exchange, k.symbol, k.interval, k.open_time, k.close_time, str(k.open), str(k.high), str(k.low),
        str(k.close), str(k.volume), str(k.quote_volume), k.trade_count, str(k.taker_buy_volume),
        str(k.taker_buy_quote_volume), k.first_trade_id, k.last_trade_id, str(k.vwap), k.closed, k.revision,
    )  # fmt: skip


def _indicator(i: IndicatorValue) -> tuple[Any, ...]:
    return (i.exchange, i.symbol, i.interval, i.name, i.open_time, _json.encode(i.values).decode(), i.revision)


def _quote(q: Quote) -> tuple[Any, ...]:
    return (
        q.exchange, q.symbol, q.ts, q.ts, q.recv_ts, str(q.bid_price), str(q.bid_qty), str(q.ask_price),
        str(q.ask_qty), q.seq,
    )  # fmt: skip


def _cols(table: _Table) -> str:
    return ", ".join(table.column_names)


_KLINE_VALUES = (
    "close_time", *OHLCV_FIELDS, "trade_count", "taker_buy_volume", "taker_buy_quote_volume", "first_trade_id",
    "last_trade_id", "vwap", "closed", "revision",
)  # fmt: skip

TRADES = _Table(
    "market_trades",
    "stage_trades",
    ("exchange text, symbol text, trade_id text, ts timestamptz, ts_ns bigint, price numeric, qty numeric, side text"),
    _trade,
    lambda e: e.ts,
    "INSERT INTO market_trades ({cols}) SELECT {select} FROM stage_trades"
    " ON CONFLICT (exchange, symbol, ts, trade_id) DO NOTHING",
)
KLINES = _Table(
    "market_klines",
    "stage_klines",
    (
        "exchange text, symbol text, interval text, open_time timestamptz, close_time timestamptz, "
        "open numeric, high numeric, low numeric, close numeric, volume numeric, quote_volume numeric, "
        "trade_count bigint, taker_buy_volume numeric, taker_buy_quote_volume numeric, "
        "first_trade_id text, last_trade_id text, vwap numeric, closed boolean, revision integer"
    ),
    _kline,
    lambda k: k.open_time,
    "INSERT INTO market_klines AS k ({cols})"
    " SELECT DISTINCT ON (exchange, symbol, interval, open_time) {select} FROM stage_klines"
    " ORDER BY exchange, symbol, interval, open_time, revision DESC, closed DESC, trade_count DESC"
    " ON CONFLICT (exchange, symbol, interval, open_time) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _KLINE_VALUES)
    + " WHERE EXCLUDED.revision > k.revision OR (EXCLUDED.revision = k.revision AND NOT k.closed"
    " AND (EXCLUDED.closed OR EXCLUDED.trade_count > k.trade_count))",
)
INDICATORS = _Table(
    "indicator_values",
    "stage_indicators",
    ("exchange text, symbol text, interval text, name text, open_time timestamptz, outputs jsonb, revision integer"),
    _indicator,
    lambda i: i.open_time,
    "INSERT INTO indicator_values AS i ({cols})"
    " SELECT DISTINCT ON (exchange, symbol, interval, name, open_time) {select} FROM stage_indicators"
    " ORDER BY exchange, symbol, interval, name, open_time, revision DESC"
    " ON CONFLICT (exchange, symbol, interval, name, open_time) DO UPDATE"
    " SET outputs = EXCLUDED.outputs, revision = EXCLUDED.revision WHERE EXCLUDED.revision > i.revision",
)
QUOTES = _Table(
    "market_quotes",
    "stage_quotes",
    (
        "exchange text, symbol text, ts timestamptz, ts_ns bigint, recv_ts_ns bigint, "
        "bid_price numeric, bid_qty numeric, ask_price numeric, ask_qty numeric, seq bigint"
    ),
    _quote,
    lambda q: q.ts,
    "INSERT INTO market_quotes ({cols}) SELECT {select} FROM stage_quotes"
    " ON CONFLICT (exchange, symbol, ts, ts_ns, recv_ts_ns) DO NOTHING",
)
TABLES: dict[type, _Table] = {Trade: TRADES, Kline: KLINES, IndicatorValue: INDICATORS, Quote: QUOTES}
_SQL = {table.name: table.upsert.format(cols=_cols(table), select=table.select_list) for table in TABLES.values()}
_PLAIN = {table.name: _SQL[table.name].split(" ON CONFLICT")[0] for table in (TRADES, QUOTES)}
_RESULT_FIELD = {"market_trades": "trades", "market_klines": "klines", "indicator_values": "indicators",
                 "market_quotes": "quotes"}  # fmt: skip


async def _setup_connection(conn: asyncpg.Connection) -> None:
    """Runs once per pooled connection: integer timestamps, and the staging tables (temporary: per session)."""
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=_ns_to_pg, decoder=_pg_to_ns, format="tuple")
    for table in TABLES.values():
        await conn.execute(table.create_stage())


class RowWriter:
    """Writes batches of events; safe to share between tasks (each write takes its own pooled connection)."""

    def __init__(self, database_url: str, settings: StorageConfig | None = None) -> None:
        self._url = database_url
        self._settings = settings or StorageConfig()
        self._pool: asyncpg.Pool | None = None
        self._mode: SchemaMode | None = None
        self._days: dict[str, set[int]] = {table.name: set() for table in TABLES.values()}  # partitions known

    @property
    def mode(self) -> SchemaMode | None:
        return self._mode

    async def start(self) -> None:
        with storage_errors("connecting the writer"):
            pool = await asyncpg.create_pool(
                self._url,
                min_size=self._settings.pool_min_size,
                max_size=self._settings.pool_max_size,
                init=_setup_connection,
            )
            try:
                async with pool.acquire() as conn:
                    mode = await read_mode(conn)
            except BaseException:
                await pool.close()
                raise
        if mode is None:
            await pool.close()
            raise StorageError("the database has no market-ingestor schema: run `market-ingestor db migrate` first")
        self._pool, self._mode = pool, mode

    async def maintain(self) -> None:
        """Partitions ahead and retention (see :func:`.schema.maintain`); run it periodically, e.g. hourly."""
        if self._pool is None:
            raise StorageError("RowWriter.maintain() before start() or after close()")
        with storage_errors("maintaining partitions"):
            async with self._pool.acquire() as conn:
                await maintain(conn, self._settings)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def write(self, events: Sequence[Trade | Kline | IndicatorValue | Quote]) -> WriteResult:
        """Stores the batch in one transaction; raises StorageUnavailable (retry) or StorageError (bad batch)."""
        if self._pool is None:
            raise StorageError("RowWriter.write() before start() or after close()")
        groups: dict[str, list[Any]] = {}
        quotes_skipped = 0
        for event in events:
            table = TABLES.get(type(event))
            if table is None:
                raise TypeError(f"RowWriter cannot store {type(event).__name__} events")
            if table is QUOTES and not self._settings.store_quotes:
                quotes_skipped += 1
                continue
            groups.setdefault(table.name, []).append(event)
        if not groups:
            return WriteResult(quotes_skipped=quotes_skipped)
        with storage_errors(f"writing a batch of {len(events)} events"):
            async with self._pool.acquire() as conn:
                try:
                    counts = await self._write(conn, groups)
                except asyncpg.CheckViolationError as exc:
                    if _NO_PARTITION not in str(exc):
                        raise
                    # A partition this writer had seen was dropped meanwhile (retention): look again, retry once.
                    for known in self._days.values():
                        known.clear()
                    counts = await self._write(conn, groups)
        written = sum(len(rows) for rows in groups.values())
        return WriteResult(
            **{_RESULT_FIELD[name]: n for name, n in counts.items()},
            unchanged=written - sum(counts.values()),
            quotes_skipped=quotes_skipped,
        )

    async def _write(self, conn: asyncpg.Connection, groups: dict[str, list[Any]]) -> dict[str, int]:
        tables = [table for table in TABLES.values() if table.name in groups]
        if self._mode is SchemaMode.PARTITIONED:
            await self._ensure_partitions(conn, tables, groups)
        counts: dict[str, int] = {}
        async with conn.transaction():
            for table in tables:
                records = [table.record(event) for event in groups[table.name]]
                await conn.copy_records_to_table(table.stage, records=records, columns=table.column_names)
                status = await self._insert(conn, table)
                counts[table.name] = int(status.rsplit(" ", 1)[1])
        return counts

    @staticmethod
    async def _insert(conn: asyncpg.Connection, table: _Table) -> str:
        plain = _PLAIN.get(table.name)
        if plain is None:
            return str(await conn.execute(_SQL[table.name]))
        # Insert-only tables: a batch is almost always all new, and a plain INSERT costs about 60% of
        # INSERT ... ON CONFLICT (which probes the index before each row and confirms the speculative insert
        # after it). A duplicate makes it fail, inside a savepoint (undoing its rows); then the idempotent
        # statement runs. Re-delivered batches start with duplicates, so little work is thrown away.
        try:
            async with conn.transaction():
                return str(await conn.execute(plain))
        except asyncpg.UniqueViolationError:
            return str(await conn.execute(_SQL[table.name]))

    async def _ensure_partitions(
        self, conn: asyncpg.Connection, tables: list[_Table], groups: dict[str, list[Any]]
    ) -> None:
        days = self._settings.partition_interval_days
        for table in tables:
            known = self._days[table.name]
            needed = {bucket_of(table.time_ns(event), days) for event in groups[table.name]} - known
            if needed:
                await ensure_days(conn, table.name, needed, days)
                known |= needed
