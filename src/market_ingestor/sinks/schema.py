"""Schema migrations: versioned SQL files applied in order, once, by one process at a time.

API::

    mode = await migrate(database_url, settings)   # idempotent; returns and logs SchemaMode
    await maintain(conn, settings)                  # plain PostgreSQL: partitions ahead, retention
    info = await schema_status(conn)                # mode, applied and pending versions, partitions

Migrations are ``migrations/NNNN_name.sql``, applied in version order, each in its own transaction together
with its row in ``schema_migrations`` (version, name, checksum). An advisory lock serializes concurrent
``migrate`` calls: two services starting together apply each file once. A changed file that was already
applied is reported (its checksum differs), not re-applied: write a new migration instead.

Mode: on the first run the server decides. If the ``timescaledb`` extension is available it is created and
the time-partitioned tables become hypertables (with compression and retention policies from config);
otherwise they are declaratively range-partitioned by day (:mod:`.partitions`). The mode is recorded in
``schema_settings`` and never changes afterwards, so a later-installed extension cannot split a database in
two layouts. Tables mark their time column with ``/*@partition_by(<column>)*/`` after ``CREATE TABLE name (...)``.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import zlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import asyncpg

from market_ingestor.config import StorageConfig
from market_ingestor.errors import StorageError
from market_ingestor.sinks.connect import connect, storage_errors
from market_ingestor.sinks.partitions import LONG_LIVED, list_partitions, maintain_partitions

logger = logging.getLogger(__name__)

_LOCK_KEY = zlib.crc32(b"market_ingestor.migrate")
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_MARKER = re.compile(r"/\*@partition_by\((\w+)\)\*/")
_CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?\"?(\w+)\"?", re.IGNORECASE)
# TimescaleDB compression groups rows by these columns (the key columns before the time column).
_SEGMENT_BY = {
    "market_klines": "exchange, symbol, interval",
    "indicator_values": "exchange, symbol, interval, name",
}

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_settings (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS schema_time_tables (table_name text PRIMARY KEY, time_column text NOT NULL);
"""


class SchemaMode(enum.Enum):
    TIMESCALE = "timescaledb"
    PARTITIONED = "partitioned"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def time_tables(self) -> list[tuple[str, str]]:
        """(table, time column) for every table this file marks as time-partitioned."""
        out = []
        for marker in _MARKER.finditer(self.sql):
            creates = list(_CREATE.finditer(self.sql, 0, marker.start()))
            if not creates:
                raise StorageError(f"migration {self.version:04d}: {marker.group(0)} follows no CREATE TABLE")
            out.append((creates[-1].group(1), marker.group(1)))
        return out

    def render(self, mode: SchemaMode) -> str:
        if mode is SchemaMode.PARTITIONED:
            return _MARKER.sub(r"PARTITION BY RANGE (\1)", self.sql)
        return self.sql


def migrations() -> list[Migration]:
    """Every migration file shipped with the package, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("market_ingestor.sinks").joinpath("migrations").iterdir():
        match = _FILE.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise StorageError(f"two migrations have version {version:04d}: {found[version].name}, {entry.name}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _decide_mode(conn: asyncpg.Connection) -> SchemaMode:
    recorded = await conn.fetchval("SELECT value FROM schema_settings WHERE key = 'mode'")
    if recorded is not None:
        return SchemaMode(recorded)
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    mode = SchemaMode.PARTITIONED
    if available:
        try:
            async with conn.transaction():
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            mode = SchemaMode.TIMESCALE
        except asyncpg.PostgresError as exc:  # e.g. not in shared_preload_libraries
            logger.warning("timescaledb is available but cannot be created; using partitions", extra={"err": str(exc)})
    await conn.execute("INSERT INTO schema_settings (key, value) VALUES ('mode', $1)", mode.value)
    return mode


async def _make_hypertable(conn: asyncpg.Connection, table: str, column: str, settings: StorageConfig) -> None:
    await conn.execute(
        "SELECT create_hypertable($1::regclass, by_range($2::name, make_interval(days => $3)),"
        " if_not_exists => true, create_default_indexes => false)",
        table,
        column,
        settings.partition_interval_days,
    )
    segment_by = _SEGMENT_BY.get(table, "exchange, symbol")
    await conn.execute(
        f"ALTER TABLE \"{table}\" SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment_by}',"
        f" timescaledb.compress_orderby = '{column} DESC')"
    )


async def _apply_policies(conn: asyncpg.Connection, tables: list[str], settings: StorageConfig) -> None:
    """TimescaleDB: chunk interval, compression and retention as configured now (replacing older policies)."""
    for table in tables:
        days = settings.partition_interval_days
        await conn.execute("SELECT set_chunk_time_interval($1::regclass, make_interval(days => $2))", table, days)
        await conn.execute("SELECT remove_compression_policy($1::regclass, if_exists => true)", table)
        if settings.compression_after_days:
            await conn.execute(
                "SELECT add_compression_policy($1::regclass, make_interval(days => $2))",
                table,
                settings.compression_after_days,
            )
        await conn.execute("SELECT remove_retention_policy($1::regclass, if_exists => true)", table)
        keep = settings.kline_retention_days if table in LONG_LIVED else settings.retention_days
        if keep:
            await conn.execute("SELECT add_retention_policy($1::regclass, make_interval(days => $2))", table, keep)


async def _time_tables(conn: asyncpg.Connection) -> list[str]:
    return [r["table_name"] for r in await conn.fetch("SELECT table_name FROM schema_time_tables ORDER BY 1")]


async def migrate(database_url: str, settings: StorageConfig | None = None) -> SchemaMode:
    """Applies the pending migrations (none: nothing changes) and the mode's partitions or policies."""
    settings = settings or StorageConfig()
    with storage_errors("migrating the schema"):
        conn = await connect(database_url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)  # released when the connection closes
            return await _migrate_locked(conn, settings)
        finally:
            await conn.close()


async def _migrate_locked(conn: asyncpg.Connection, settings: StorageConfig) -> SchemaMode:
    async with conn.transaction():
        await conn.execute(_BOOKKEEPING)
    mode = await _decide_mode(conn)
    applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
    for migration in migrations():
        done = applied.get(migration.version)
        if done is not None:
            if done["checksum"] != migration.checksum:
                logger.warning(
                    "applied migration has changed since; not re-applied (add a new migration instead)",
                    extra={"version": migration.version, "migration": migration.name},
                )
            continue
        async with conn.transaction():
            await conn.execute(migration.render(mode))
            for table, column in migration.time_tables():
                await conn.execute("INSERT INTO schema_time_tables VALUES ($1, $2)", table, column)
                if mode is SchemaMode.TIMESCALE:
                    await _make_hypertable(conn, table, column, settings)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        logger.info("migration applied", extra={"version": migration.version, "migration": migration.name})
    if mode is SchemaMode.TIMESCALE:
        async with conn.transaction():
            await _apply_policies(conn, await _time_tables(conn), settings)
    else:
        await maintain(conn, settings)
    logger.info("schema ready", extra={"mode": mode.value})
    return mode


async def read_mode(conn: asyncpg.Connection) -> SchemaMode | None:
    """The recorded mode, or None when the database was never migrated."""
    if await conn.fetchval("SELECT to_regclass('schema_settings')") is None:
        return None
    value = await conn.fetchval("SELECT value FROM schema_settings WHERE key = 'mode'")
    return None if value is None else SchemaMode(value)


async def maintain(conn: asyncpg.Connection, settings: StorageConfig) -> None:
    """Plain PostgreSQL: creates partitions ahead and drops those past retention. TimescaleDB: nothing to do
    (its policies run in the server). Run it at least daily (the sink service does; so does ``db maintain``)."""
    if await read_mode(conn) is SchemaMode.PARTITIONED:
        await maintain_partitions(conn, await _time_tables(conn), settings)


@dataclass
class SchemaStatus:
    mode: SchemaMode | None
    applied: list[dict[str, Any]] = field(default_factory=list)  # version, name, applied_at, changed
    pending: list[str] = field(default_factory=list)
    partitions: dict[str, list[str]] = field(default_factory=dict)  # table -> partition names, oldest first


async def schema_status(conn: asyncpg.Connection) -> SchemaStatus:
    mode = await read_mode(conn)
    status = SchemaStatus(mode)
    shipped = {m.version: m for m in migrations()}
    if mode is None:
        status.pending = [f"{m.version:04d}_{m.name}" for m in shipped.values()]
        return status
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
    for row in rows:
        known = shipped.get(row["version"])
        status.applied.append(
            {
                "version": row["version"],
                "name": row["name"],
                "applied_at": row["applied_at"].isoformat(),
                "changed_since": known is not None and known.checksum != row["checksum"],
            }
        )
    done = {row["version"] for row in rows}
    status.pending = [f"{m.version:04d}_{m.name}" for v, m in shipped.items() if v not in done]
    for table in await _time_tables(conn):
        if mode is SchemaMode.PARTITIONED:
            async with conn.transaction():
                status.partitions[table] = [p.name for p in await list_partitions(conn, table)]
        else:
            chunks = await conn.fetch(
                "SELECT chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = $1 ORDER BY range_start",
                table,
            )
            status.partitions[table] = [r["chunk_name"] for r in chunks]
    return status
