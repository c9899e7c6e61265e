"""A PostgreSQL database of a test module's own on the dev stack's server, created fresh and dropped after."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from market_ingestor.devstack import StackInfo
from market_ingestor.sinks.schema import migrate


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@asynccontextmanager
async def fresh_database(stack: StackInfo, tag: str, migrated: bool = False) -> AsyncIterator[str]:
    """Yields the URL of a new database named ``test_{tag}_{random}``, with the schema when ``migrated``."""
    name = f"test_{tag}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(stack.database_url, name)
        if migrated:
            await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
