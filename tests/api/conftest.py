"""Fixtures of the query API tests: a database of their own per test module on the dev stack's PostgreSQL, with
the schema migrated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from db_helpers import fresh_database
from market_ingestor.devstack import StackInfo


@pytest.fixture(scope="module")
async def database_url(dev_stack: StackInfo) -> AsyncIterator[str]:
    """A migrated database of this test module's own, dropped afterwards."""
    async with fresh_database(dev_stack, "api", migrated=True) as url:
        yield url
