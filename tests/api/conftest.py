"""Fixtures of the query API tests: a database of their own per test module on the dev stack's PostgreSQL, with
the schema migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from db_helpers import PgServer, fresh_database


@pytest.fixture(scope="module")
async def database_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A migrated database of this test module's own, dropped afterwards."""
    async with fresh_database(pg_server, "api", migrated=True) as url:
        yield url
