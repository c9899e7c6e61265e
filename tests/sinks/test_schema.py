"""Migrations, partitions and hypertables on both PostgreSQL servers of the dev stack (plain and TimescaleDB)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from db_helpers import PgServer, fresh_database
from market_ingestor.config import StorageConfig
from market_ingestor.model import Trade
from market_ingestor.sinks.partitions import maintain_partitions
from market_ingestor.sinks.schema import SchemaMode, maintain, migrate, migrate_schema, migrations, schema_status
from market_ingestor.sinks.writer import RowWriter, WriteResult

D = Decimal
TIME_TABLES = ("market_trades", "market_klines", "indicator_values", "market_quotes")
DAY_NS = 86_400 * 10**9


def test_migration_files_are_numbered_and_mark_their_time_tables() -> None:
    first = migrations()[0]
    assert [m.version for m in migrations()][:2] == [1, 2]
    assert first.time_tables() == [
        ("market_trades", "ts"),
        ("market_klines", "open_time"),
        ("indicator_values", "open_time"),
        ("market_quotes", "ts"),
    ]
    partitioned = first.render(SchemaMode.PARTITIONED)
    assert (
        partitioned.count("PARTITION BY RANGE (ts)") == 2 and partitioned.count("PARTITION BY RANGE (open_time)") == 2
    )
    assert ") PARTITION BY" not in first.render(SchemaMode.TIMESCALE)  # hypertables are made after the file


async def _snapshot(conn: asyncpg.Connection) -> tuple[list[tuple[object, ...]], list[str]]:
    applied = [tuple(r) for r in await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")]
    tables = [
        r["relname"]
        for r in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY relname"
        )
    ]
    return applied, tables


@pytest.mark.postgres
async def test_two_concurrent_migrations_apply_each_file_once_and_a_third_changes_nothing(
    pg_server: PgServer, database_url: str
) -> None:
    modes = await asyncio.gather(migrate(database_url), migrate(database_url))
    assert modes == [pg_server.mode, pg_server.mode]
    conn = await asyncpg.connect(database_url)
    try:
        before = await _snapshot(conn)
        assert [v for v, *_ in before[0]] == [m.version for m in migrations()]
        assert {"market_trades", "market_klines", "indicator_values", "market_quotes"} <= set(before[1])
        assert await migrate(database_url) is pg_server.mode
        assert await _snapshot(conn) == before
        status = await schema_status(conn)
        assert status.mode is pg_server.mode and status.pending == []
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_time_tables_are_day_partitions_made_ahead_or_hypertables_with_policies(
    pg_server: PgServer, database_url: str
) -> None:
    settings = StorageConfig(partitions_ahead_days=2)
    await migrate(database_url, settings)
    conn = await asyncpg.connect(database_url)
    try:
        status = await schema_status(conn)
        if pg_server.timescale:
            hypertables = await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
            assert sorted(r[0] for r in hypertables) == sorted(TIME_TABLES)
            assert set(status.hypertables) == set(TIME_TABLES)
            for table in TIME_TABLES:
                info = status.hypertables[table]
                assert (info["chunk_interval"], info["compression_after"], info["retention"]) == (
                    "1 day(s)",
                    "7 day(s)",
                    "none",
                ), table
                assert [job["proc"] for job in info["jobs"]] == ["policy_compression"], table
            assert await conn.fetchval("SELECT count(*) FROM pg_inherits") == 0  # no declarative partitions
            return
        assert status.hypertables == {}
        today = datetime.now(UTC).date()
        expected = {f"{today + timedelta(days=d):%Y%m%d}" for d in (-1, 0, 1, 2)}
        for table in ("market_trades", "market_klines", "indicator_values", "market_quotes"):
            names = status.partitions[table]
            assert {name.removeprefix(f"{table}_p") for name in names} >= expected, (table, names)
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_retention_drops_only_partitions_that_ended_before_the_cutoff(
    pg_server: PgServer, database_url: str
) -> None:
    if pg_server.timescale:
        pytest.skip("partitioned mode: TimescaleDB's retention is test_retention_policy_drops_old_chunks_only")
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        now = datetime(2031, 5, 10, 12, tzinfo=UTC)
        keep = StorageConfig(partitions_ahead_days=0, retention_days=0)
        # Build a history: 2031-04-30 .. 2031-05-10 exist.
        for day in range(1, 11):
            await maintain_partitions(conn, ["market_trades"], keep, now=datetime(2031, 5, day, tzinfo=UTC))
        drop = StorageConfig(partitions_ahead_days=0, retention_days=3, kline_retention_days=0)
        await maintain_partitions(conn, ["market_trades", "market_klines"], drop, now=now)
        names = (await schema_status(conn)).partitions["market_trades"]
        may = sorted(n for n in names if "_p203105" in n)
        # The cutoff is 2031-05-07 12:00: the partition of 05-07 still holds rows newer than that and stays.
        assert may == [f"market_trades_p203105{d:02d}" for d in range(7, 11)]
        assert any("_p203105" in n for n in (await schema_status(conn)).partitions["market_klines"])
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_maintain_is_a_no_op_before_migrate(pg_server: PgServer) -> None:
    async with fresh_database(pg_server, "unmigrated") as url:
        conn = await asyncpg.connect(url)
        try:
            report = await maintain(conn, StorageConfig(), run_policies=True)
        finally:
            await conn.close()
    assert report.mode is None and report.lines() == [
        "not migrated: nothing to maintain (run `market-ingestor db migrate`)"
    ]


def trade(tid: int, ts_ns: int, symbol: str = "OLDUSDT") -> Trade:
    return Trade("binance", symbol, str(tid), D("100.5"), D("0.25"), "buy", ts_ns, ts_ns)


async def _jobs(conn: asyncpg.Connection) -> dict[tuple[str, str], tuple[int, str]]:
    rows = await conn.fetch(
        "SELECT hypertable_name, proc_name, job_id, config::text FROM timescaledb_information.jobs"
        " WHERE hypertable_name IS NOT NULL"
    )
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


@pytest.mark.postgres
async def test_migrate_changes_policies_only_where_the_settings_differ_and_services_never(pg_server: PgServer) -> None:
    async with fresh_database(pg_server, "policies") as url:
        first = await migrate_schema(url, StorageConfig(retention_days=30))
        assert first.mode is pg_server.mode and first.changed == [] and first.differing == []
        if not pg_server.timescale:
            # Partitioned mode keeps no policies in the database: there is nothing to differ or change.
            other = await migrate_schema(url, StorageConfig(retention_days=3), apply_settings=True)
            assert (other.changed, other.differing) == ([], [])
            return
        conn = await asyncpg.connect(url)
        try:
            made = await _jobs(conn)
            assert '"30 days"' in made[("market_trades", "policy_retention")][1]
            assert ("market_klines", "policy_retention") not in made  # kline_retention_days = 0: kept
            for _ in range(3):  # every service start, every `db load`
                again = await migrate_schema(url, StorageConfig(retention_days=30))
                assert again.changed == [] and again.differing == []
            assert await _jobs(conn) == made  # same job ids, same configs
            # A backfill run with other settings: nothing changes, the differences are reported.
            load = await migrate_schema(url, StorageConfig(retention_days=3, compression_after_days=0))
            assert load.changed == [] and "market_trades: retention: 30 day(s) -> 3 day(s)" in load.differing
            assert "market_trades: compression after: 7 day(s) -> none" in load.differing
            assert await _jobs(conn) == made
            # `db migrate` applies them: the retention job keeps its id, the compression jobs go.
            applied = await migrate_schema(
                url, StorageConfig(retention_days=3, compression_after_days=0), apply_settings=True
            )
            assert "market_trades: retention: 30 day(s) -> 3 day(s)" in applied.changed
            now = await _jobs(conn)
            assert now[("market_trades", "policy_retention")][0] == made[("market_trades", "policy_retention")][0]
            assert '"3 days"' in now[("market_trades", "policy_retention")][1]
            assert not any(proc == "policy_compression" for _, proc in now)
            final = await migrate_schema(
                url, StorageConfig(retention_days=3, compression_after_days=0), apply_settings=True
            )
            assert final.changed == [] and await _jobs(conn) == now
        finally:
            await conn.close()


@pytest.mark.postgres
async def test_compression_settings_cover_every_unique_key_column(pg_server: PgServer, database_url: str) -> None:
    """TimescaleDB warns about a unique key column that is neither a segmentby nor an orderby column."""
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        if not pg_server.timescale:
            assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
            return
        for table in TIME_TABLES:
            settings = await conn.fetchrow(
                "SELECT segmentby, orderby FROM timescaledb_information.hypertable_compression_settings"
                " WHERE hypertable = $1::regclass",
                table,
            )
            covered = {part.split()[0] for part in f"{settings[0]},{settings[1]}".split(",") if part}
            key_columns = await conn.fetch(
                "SELECT DISTINCT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = $1::regclass AND i.indisunique",
                table,
            )
            assert {r[0] for r in key_columns} <= covered, (table, settings)
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_retention_and_compression_by_maintain(pg_server: PgServer) -> None:
    """`maintain(run_policies=True)` (`db maintain`): partitions or chunks past retention go, TimescaleDB
    compresses chunks past compress_after, and writes into a compressed chunk stay idempotent."""
    now = datetime.now(UTC)
    now_ns = int(now.timestamp()) * 10**9
    old, recent = now_ns - 40 * DAY_NS, now_ns - 10 * DAY_NS  # retention 30 days, compression after 7
    settings = StorageConfig(retention_days=30)
    async with fresh_database(pg_server, "maintain") as url:
        await migrate_schema(url, settings)
        writer = RowWriter(url, settings)
        await writer.start()
        conn = await asyncpg.connect(url)
        try:
            batch = [trade(i, ts + i * 10**9) for ts in (old, recent) for i in range(5)]
            assert await writer.write(batch) == WriteResult(trades=10)
            report = await maintain(conn, settings, run_policies=True)
            assert await conn.fetchval("SELECT count(*) FROM market_trades") == 5  # the old day went
            assert await conn.fetchval("SELECT min(ts_ns) FROM market_trades") == recent
            assert len(report.dropped["market_trades"]) == 1
            if not pg_server.timescale:
                assert report.compressed == {}
                assert report.dropped["market_trades"][0].startswith("market_trades_p")
                return
            compressed = (
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = $1 AND is_compressed"
            )
            assert len(report.compressed["market_trades"]) == 1
            assert await conn.fetchval(compressed, "market_trades") == 1
            # Into the compressed chunk: the same rows change nothing, new ones are stored once.
            again = await writer.write([*batch[5:], trade(9, recent + 9 * 10**9)])
            assert again == WriteResult(trades=1, unchanged=5)
            assert (await writer.write([trade(9, recent + 9 * 10**9)])).unchanged == 1
            assert await conn.fetchval("SELECT count(*) FROM market_trades") == 6
            assert (await maintain(conn, settings, run_policies=True)).lines() == ["timescaledb: nothing to do"]
        finally:
            await conn.close()
            await writer.close()
