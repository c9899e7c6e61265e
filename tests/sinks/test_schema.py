"""Migrations and partitions on the dev stack's PostgreSQL (plain: no TimescaleDB there)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from market_ingestor.config import StorageConfig
from market_ingestor.sinks.partitions import maintain_partitions
from market_ingestor.sinks.schema import SchemaMode, maintain, migrate, migrations, schema_status


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
async def test_two_concurrent_migrations_apply_each_file_once_and_a_third_changes_nothing(database_url: str) -> None:
    modes = await asyncio.gather(migrate(database_url), migrate(database_url))
    assert modes == [SchemaMode.PARTITIONED, SchemaMode.PARTITIONED]
    conn = await asyncpg.connect(database_url)
    try:
        before = await _snapshot(conn)
        assert [v for v, *_ in before[0]] == [m.version for m in migrations()]
        assert {"market_trades", "market_klines", "indicator_values", "market_quotes"} <= set(before[1])
        assert await migrate(database_url) is SchemaMode.PARTITIONED
        assert await _snapshot(conn) == before
        status = await schema_status(conn)
        assert status.mode is SchemaMode.PARTITIONED and status.pending == []
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_partitions_are_created_ahead_for_every_time_table(database_url: str) -> None:
    settings = StorageConfig(partitions_ahead_days=2)
    await migrate(database_url, settings)
    conn = await asyncpg.connect(database_url)
    try:
        status = await schema_status(conn)
        today = datetime.now(UTC).date()
        expected = {f"{today + timedelta(days=d):%Y%m%d}" for d in (-1, 0, 1, 2)}
        for table in ("market_trades", "market_klines", "indicator_values", "market_quotes"):
            names = status.partitions[table]
            assert {name.removeprefix(f"{table}_p") for name in names} >= expected, (table, names)
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_retention_drops_only_partitions_that_ended_before_the_cutoff(database_url: str) -> None:
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
async def test_maintain_is_a_no_op_before_migrate(dev_stack: object, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await maintain(conn, StorageConfig())  # migrated by the tests above, or not: both must pass
    finally:
        await conn.close()
