"""Fixtures of the query API tests: a database of their own per test module on the dev stack's PostgreSQL, with
the schema migrated."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from api_helpers import database_url_for

from market_ingestor.devstack import StackInfo
from market_ingestor.sinks.schema import migrate


@pytest.fixture(scope="module")
async def database_url(dev_stack: StackInfo) -> AsyncIterator[str]:
    """A migrated database of this test module's own, dropped afterwards."""
    name = f"test_api_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dev_stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = database_url_for(dev_stack, name)
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
