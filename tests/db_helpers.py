"""A PostgreSQL database of a test module's own on one of the dev stack's servers, created fresh and dropped after.

Storage tests take the ``pg_server`` fixture (tests/conftest.py): plain PostgreSQL, then TimescaleDB.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from market_ingestor.sinks.schema import SchemaMode, migrate


@dataclass(frozen=True)
class PgServer:
    """One PostgreSQL server of the dev stack and the storage mode a database there gets ("auto")."""

    name: str  # "postgres" or "timescaledb"
    url: str

    @property
    def timescale(self) -> bool:
        return self.name == "timescaledb"

    @property
    def mode(self) -> SchemaMode:
        return SchemaMode.TIMESCALE if self.timescale else SchemaMode.PARTITIONED


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@asynccontextmanager
async def fresh_database(server: PgServer | str, tag: str, migrated: bool = False) -> AsyncIterator[str]:
    """Yields the URL of a new database named ``test_{tag}_{random}``, with the schema when ``migrated``."""
    server_url = server.url if isinstance(server, PgServer) else server
    name = f"test_{tag}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(server_url, name)
        if migrated:
            await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
