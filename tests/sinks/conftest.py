"""Each test module gets its own freshly created PostgreSQL database on the dev stack's server, dropped after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from db_helpers import PgServer, fresh_database


@pytest.fixture(scope="module")
async def database_url(pg_server: PgServer) -> AsyncIterator[str]:
    async with fresh_database(pg_server, "sinks") as url:
        yield url
