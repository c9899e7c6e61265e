"""Each test module gets its own freshly created PostgreSQL database on the dev stack's server, dropped after."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from market_ingestor.devstack import StackInfo


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
async def database_url(dev_stack: StackInfo) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dev_stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(dev_stack.database_url, name)
    admin = await asyncpg.connect(dev_stack.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
