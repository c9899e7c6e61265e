"""Session fixtures: the real servers of the dev stack, reused when running, else started (and left running
for the next session; `market-ingestor dev down` stops them)."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from db_helpers import PgServer
from market_ingestor.devstack import StackInfo, ensure_stack

# Services started by tests (in this process or as children, which inherit the environment) serve /metrics on a
# free port, not the fixed defaults: tests run side by side and often start several services of one kind.
for _setting in ("INGEST", "STREAMS", "SINK", "PUSH"):
    os.environ.setdefault(f"MARKET_INGESTOR__{_setting}__METRICS_PORT", "0")


@pytest.fixture(scope="session")
def dev_stack() -> Iterator[StackInfo]:
    info = ensure_stack()
    before = asyncio.run(_topics(info.kafka_bootstrap))
    yield info
    # Every test makes its own topics (~1,000 partitions a run); a dev broker that lives on across runs ran out of
    # file descriptors after about twenty, so this session's topics go at its end.
    try:
        asyncio.run(_delete_topics(info.kafka_bootstrap, before))
    except Exception as exc:  # cleanup only: the results stand
        warnings.warn(f"the test topics of this session were not deleted: {exc!r}", stacklevel=1)


@pytest.fixture(scope="module", params=["postgres", "timescaledb"])
def pg_server(request: pytest.FixtureRequest, dev_stack: StackInfo) -> PgServer:
    """The PostgreSQL server a storage test runs against: every such test runs twice, on plain PostgreSQL
    (partitioned mode) and on the dev stack's TimescaleDB cluster (TimescaleDB mode)."""
    if request.param == "postgres":
        return PgServer("postgres", dev_stack.database_url)
    if dev_stack.timescaledb_url is None:
        pytest.skip(f"no TimescaleDB server in the dev stack: {dev_stack.timescaledb_missing}")
    return PgServer("timescaledb", dev_stack.timescaledb_url)


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete_topics(bootstrap: str, keep: set[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        made = sorted(topic for topic in await admin.list_topics() if topic not in keep and not topic.startswith("__"))
        for start in range(0, len(made), 100):
            await admin.delete_topics(made[start : start + 100])
    finally:
        await admin.close()
