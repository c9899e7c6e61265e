"""Each test module gets its own freshly created PostgreSQL database on the dev stack's server, dropped after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from db_helpers import fresh_database
from market_ingestor.devstack import StackInfo


@pytest.fixture(scope="module")
async def database_url(dev_stack: StackInfo) -> AsyncIterator[str]:
    async with fresh_database(dev_stack, "sinks") as url:
        yield url
