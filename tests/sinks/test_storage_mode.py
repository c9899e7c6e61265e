"""``storage.mode`` against real servers: TimescaleDB installed but not preloaded, absent, or not wanted.

A server whose installation has TimescaleDB but whose ``shared_preload_libraries`` lacks it answers
``CREATE EXTENSION timescaledb`` with a FATAL error that closes the connection; migrate must see that coming.
This module starts such a server of its own: a cluster of the dev stack's TimescaleDB installation without the
preload, on a free port, stopped at the end.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from db_helpers import PgServer, fresh_database
from market_ingestor.config import StorageConfig
from market_ingestor.devstack import StackInfo
from market_ingestor.devstack.config import StackConfig
from market_ingestor.devstack.postgres import TimescaleServer
from market_ingestor.errors import StorageError
from market_ingestor.sinks.schema import SchemaMode, migrate

pytestmark = pytest.mark.postgres


class NotPreloaded(TimescaleServer):
    """The TimescaleDB installation, run without ``shared_preload_libraries``."""

    name = "timescaledb-not-preloaded"
    external_env = "MARKET_INGESTOR_TEST_NOT_PRELOADED_URL"  # never set: always local

    def __init__(self, config: StackConfig, port: int) -> None:
        super().__init__(config)
        self._port = port

    @property
    def port(self) -> int:
        return self._port

    def settings(self) -> dict[str, str]:
        return {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def not_preloaded(dev_stack: StackInfo) -> Iterator[str]:
    if dev_stack.timescaledb_url is None:
        pytest.skip(f"no TimescaleDB installation in the dev stack: {dev_stack.timescaledb_missing}")
    # Not pytest's tmp_path: that is private to root, and PostgreSQL runs as an unprivileged user.
    directory = Path(tempfile.mkdtemp(prefix="market-ingestor-not-preloaded-"))
    directory.chmod(0o755)
    server = NotPreloaded(StackConfig(directory), _free_port())
    try:
        assert server.ensure(timeout=60) is True
        yield server.url()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def unpreloaded_db(not_preloaded: str) -> AsyncIterator[str]:
    async with fresh_database(not_preloaded, "nopreload") as url:
        yield url


async def _recorded_mode(url: str) -> str | None:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT value FROM schema_settings WHERE key = 'mode'")  # type: ignore[no-any-return]
    finally:
        await conn.close()


async def test_auto_falls_back_to_partitions_with_a_warning_naming_the_setting(
    unpreloaded_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(unpreloaded_db)
    try:  # the premise: the extension is there, the preload is not
        assert await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'") == 1
        assert "timescaledb" not in await conn.fetchval("SHOW shared_preload_libraries")
    finally:
        await conn.close()
    with caplog.at_level(logging.WARNING, logger="market_ingestor.sinks.schema"):
        assert await migrate(unpreloaded_db) is SchemaMode.PARTITIONED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("shared_preload_libraries" in w and "using partitioned tables" in w for w in warnings), warnings
    assert await _recorded_mode(unpreloaded_db) == "partitioned"
    assert await migrate(unpreloaded_db) is SchemaMode.PARTITIONED  # and stays so


async def test_asking_for_timescaledb_without_the_preload_is_a_clear_error(unpreloaded_db: str) -> None:
    with pytest.raises(StorageError, match=r"storage.mode = 'timescaledb', but .*shared_preload_libraries"):
        await migrate(unpreloaded_db, StorageConfig(mode="timescaledb"))
    assert await _recorded_mode(unpreloaded_db) is None  # nothing decided


async def test_asking_for_timescaledb_where_it_is_not_installed_is_a_clear_error(dev_stack: StackInfo) -> None:
    async with fresh_database(dev_stack.database_url, "noext") as url:
        with pytest.raises(StorageError, match=r"storage.mode = 'timescaledb', but the server has no timescaledb"):
            await migrate(url, StorageConfig(mode="timescaledb"))


async def test_postgres_mode_on_a_timescaledb_server_makes_partitions_and_no_extension(pg_server: PgServer) -> None:
    async with fresh_database(pg_server, "pgmode") as url:
        assert await migrate(url, StorageConfig(mode="postgres")) is SchemaMode.PARTITIONED
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
            assert await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'market_trades'::regclass")
        finally:
            await conn.close()
        # The recorded mode never changes: asking for the other one is an error, "auto" follows the record.
        with pytest.raises(StorageError, match="set up in partitioned mode"):
            await migrate(url, StorageConfig(mode="timescaledb"))
        assert await migrate(url) is SchemaMode.PARTITIONED


async def test_timescaledb_mode_where_it_is_preloaded(pg_server: PgServer) -> None:
    async with fresh_database(pg_server, "tsmode") as url:
        if not pg_server.timescale:
            with pytest.raises(StorageError, match="no timescaledb extension"):
                await migrate(url, StorageConfig(mode="timescaledb"))
            return
        assert await migrate(url, StorageConfig(mode="timescaledb")) is SchemaMode.TIMESCALE
        with pytest.raises(StorageError, match="set up in timescaledb mode"):
            await migrate(url, StorageConfig(mode="postgres"))
