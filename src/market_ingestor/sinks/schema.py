"""Schema migrations: versioned SQL files applied in order, once, by one process at a time.

API::

    mode = await migrate(database_url, settings)   # idempotent; returns and logs SchemaMode
    report = await migrate_schema(database_url, settings, apply_settings=True)   # ``db migrate``: also policies
    done = await maintain(conn, settings)           # partitions ahead + retention, or the TimescaleDB policies now
    info = await schema_status(conn)                # mode, applied and pending versions, partitions or chunks

Migrations are ``migrations/NNNN_name.sql``, applied in version order, each in its own transaction together
with its row in ``schema_migrations`` (version, name, checksum). An advisory lock serializes concurrent
``migrate`` calls: two services starting together apply each file once. A changed file that was already
applied is reported (its checksum differs), not re-applied: write a new migration instead.

Mode: chosen at the first run by ``storage.mode`` and the server. ``auto`` creates the ``timescaledb``
extension when the server preloads it and makes the time-partitioned tables hypertables (compression and
retention policies from config, :mod:`.timescale`); otherwise they are declaratively range-partitioned by day
(:mod:`.partitions`). A server that has the extension but does not preload it would answer ``CREATE EXTENSION``
with a FATAL error that closes the connection, so ``shared_preload_libraries`` is read first: ``auto`` then warns
(naming the setting) and takes partitions, ``timescaledb`` stops with that advice, ``postgres`` never asks. The
mode is recorded in ``schema_settings`` and never changes afterwards, so a later-installed extension cannot split
a database in two layouts; a ``storage.mode`` that contradicts the recorded one is an error. Tables mark their
time column with ``/*@partition_by(<column>)*/`` after ``CREATE TABLE name (...)``.

TimescaleDB policies are changed by ``db migrate`` only (``apply_settings=True``), and only where they differ;
the migrations services run at start leave existing policies alone and log the differences (see
:mod:`.timescale` for why).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from typing import Any

import asyncpg

from market_ingestor.config import StorageConfig
from market_ingestor.errors import StorageError
from market_ingestor.sinks import timescale
from market_ingestor.sinks.connect import connect, storage_errors
from market_ingestor.sinks.partitions import LONG_LIVED, list_partitions, maintain_partitions

logger = logging.getLogger(__name__)

_LOCK_KEY = zlib.crc32(b"market_ingestor.migrate")
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_MARKER = re.compile(r"/\*@partition_by\((\w+)\)\*/")
_CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?\"?(\w+)\"?", re.IGNORECASE)

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


async def _decide_mode(conn: asyncpg.Connection, wanted: str) -> SchemaMode:
    recorded = await conn.fetchval("SELECT value FROM schema_settings WHERE key = 'mode'")
    if recorded is not None:
        mode = SchemaMode(recorded)
        if (wanted, mode) in (("timescaledb", SchemaMode.PARTITIONED), ("postgres", SchemaMode.TIMESCALE)):
            raise StorageError(
                f"storage.mode = {wanted!r}, but this database was set up in {mode.value} mode, which never changes:"
                " use storage.mode = 'auto' for it, or a new database"
            )
        return mode
    mode = SchemaMode.PARTITIONED
    if wanted != "postgres":
        problem = await _timescaledb_problem(conn)
        if problem is None:
            try:
                async with conn.transaction():
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                mode = SchemaMode.TIMESCALE
                await timescale.check_version(conn)
            except asyncpg.PostgresError as exc:  # e.g. not allowed to create extensions
                problem = f"CREATE EXTENSION timescaledb failed: {exc}"
        if problem is not None and wanted == "timescaledb":
            raise StorageError(f"storage.mode = 'timescaledb', but {problem}")
        if problem is not None and not problem.startswith(_NOT_INSTALLED):
            logger.warning("%s; using partitioned tables (plain PostgreSQL mode)", problem)
    await conn.execute("INSERT INTO schema_settings (key, value) VALUES ('mode', $1)", mode.value)
    return mode


_NOT_INSTALLED = "the server has no timescaledb extension"


async def _timescaledb_problem(conn: asyncpg.Connection) -> str | None:
    """Why TimescaleDB cannot be used on this server, or None. Reads catalogs only: nothing here loads it."""
    if not await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"):
        return f"{_NOT_INSTALLED} (install TimescaleDB on the database server)"
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    if "timescaledb" not in [name.strip().strip('"') for name in preload.split(",")]:
        return (
            "the server has the timescaledb extension but does not preload it: add timescaledb to "
            f"shared_preload_libraries (now {preload!r}) in postgresql.conf and restart the server"
        )
    return None


async def _time_tables(conn: asyncpg.Connection) -> list[str]:
    return [r["table_name"] for r in await conn.fetch("SELECT table_name FROM schema_time_tables ORDER BY 1")]


@dataclass
class MigrateReport:
    mode: SchemaMode
    applied: list[str] = field(default_factory=list)  # migrations applied by this run
    changed: list[str] = field(default_factory=list)  # TimescaleDB settings changed by this run
    differing: list[str] = field(default_factory=list)  # settings that differ from config and were left alone


async def migrate(database_url: str, settings: StorageConfig | None = None) -> SchemaMode:
    """Applies the pending migrations (none: nothing changes) and the mode's partitions; what services run."""
    return (await migrate_schema(database_url, settings)).mode


async def migrate_schema(
    database_url: str, settings: StorageConfig | None = None, *, apply_settings: bool = False
) -> MigrateReport:
    """:func:`migrate`, reporting what it did; ``apply_settings`` also brings existing TimescaleDB settings and
    policies in line with ``settings`` (``db migrate``)."""
    settings = settings or StorageConfig()
    with storage_errors("migrating the schema"):
        conn = await connect(database_url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)  # released when the connection closes
            return await _migrate_locked(conn, settings, apply_settings)
        finally:
            await conn.close()


async def _migrate_locked(conn: asyncpg.Connection, settings: StorageConfig, apply_settings: bool) -> MigrateReport:
    async with conn.transaction():
        await conn.execute(_BOOKKEEPING)
    report = MigrateReport(await _decide_mode(conn, settings.mode))
    mode = report.mode
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
                    await timescale.make_hypertable(conn, table, column, settings)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        report.applied.append(f"{migration.version:04d}_{migration.name}")
        logger.info("migration applied", extra={"version": migration.version, "migration": migration.name})
    if mode is SchemaMode.TIMESCALE:
        for table, column in await _time_columns(conn):
            wanted = timescale.wanted_policy(table, column, settings)
            if apply_settings:
                async with conn.transaction():
                    report.changed += await timescale.reconcile(conn, wanted)
            else:
                report.differing += timescale.differences(wanted, await timescale.read_policy(conn, table))
        if report.differing:
            logger.warning(
                "the [storage] settings differ from the database's; left as they are (`db migrate` applies them)",
                extra={"differences": report.differing},
            )
    else:
        await maintain(conn, settings)
    logger.info("schema ready", extra={"mode": mode.value})
    return report


async def _time_columns(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch("SELECT table_name, time_column FROM schema_time_tables ORDER BY 1")
    return [(row["table_name"], row["time_column"]) for row in rows]


async def read_mode(conn: asyncpg.Connection) -> SchemaMode | None:
    """The recorded mode, or None when the database was never migrated."""
    if await conn.fetchval("SELECT to_regclass('schema_settings')") is None:
        return None
    value = await conn.fetchval("SELECT value FROM schema_settings WHERE key = 'mode'")
    return None if value is None else SchemaMode(value)


@dataclass
class MaintainReport:
    """What :func:`maintain` did, per table."""

    mode: SchemaMode | None
    created: dict[str, list[str]] = field(default_factory=dict)  # partitions made (plain PostgreSQL)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # partitions or chunks dropped (retention)
    compressed: dict[str, list[str]] = field(default_factory=dict)  # chunks compressed (TimescaleDB)

    def lines(self) -> list[str]:
        if self.mode is None:
            return ["not migrated: nothing to maintain (run `market-ingestor db migrate`)"]
        unit = "partition(s)" if self.mode is SchemaMode.PARTITIONED else "chunk(s)"
        out = []
        for verb, found in (("created", self.created), ("compressed", self.compressed), ("dropped", self.dropped)):
            out += [f"{table}: {verb} {len(names)} {unit}: {', '.join(names)}" for table, names in found.items()]
        return out or [f"{self.mode.value}: nothing to do"]


async def maintain(conn: asyncpg.Connection, settings: StorageConfig, *, run_policies: bool = False) -> MaintainReport:
    """Plain PostgreSQL: creates partitions ahead and drops those past ``[storage]`` retention (run it at least
    daily: the sink service does, so does ``db maintain``). TimescaleDB: the server's policy jobs do this work;
    with ``run_policies`` (``db maintain``) it is done now, by the database's policies (see :mod:`.timescale`)."""
    report = MaintainReport(await read_mode(conn))
    if report.mode is SchemaMode.PARTITIONED:
        made, gone = await maintain_partitions(conn, await _time_tables(conn), settings)
        report.created = {table: names for table, names in made.items() if names}
        report.dropped = {table: names for table, names in gone.items() if names}
    elif report.mode is SchemaMode.TIMESCALE and run_policies:
        for table in await _time_tables(conn):
            compressed, dropped = await timescale.run_policies(conn, table)
            if compressed:
                report.compressed[table] = compressed
            if dropped:
                report.dropped[table] = dropped
    return report


async def retention_windows(conn: asyncpg.Connection, settings: StorageConfig) -> dict[str, timedelta]:
    """Per table, how far back rows are kept: the database's retention policies (TimescaleDB) or ``[storage]``
    (plain PostgreSQL, where ``maintain`` applies them). Tables that keep everything are absent."""
    mode = await read_mode(conn)
    tables = await _time_tables(conn) if mode is not None else []
    if mode is SchemaMode.TIMESCALE:
        return await timescale.retention_cutoffs(conn, tables)
    windows = {}
    for table in tables:
        days = settings.kline_retention_days if table in LONG_LIVED else settings.retention_days
        if days:
            windows[table] = timedelta(days=days)
    return windows


@dataclass
class SchemaStatus:
    mode: SchemaMode | None
    applied: list[dict[str, Any]] = field(default_factory=list)  # version, name, applied_at, changed
    pending: list[str] = field(default_factory=list)
    partitions: dict[str, list[str]] = field(default_factory=dict)  # table -> partition names, oldest first
    hypertables: dict[str, dict[str, Any]] = field(default_factory=dict)  # TimescaleDB: chunks, settings, jobs
    extension: str | None = None  # the timescaledb extension's version, where it is created


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
            status.hypertables[table] = await timescale.describe(conn, table)
            status.partitions[table] = status.hypertables[table]["chunks"]
    if mode is SchemaMode.TIMESCALE:
        status.extension = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return status
