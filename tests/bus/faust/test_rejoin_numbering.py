"""A member that rejoins a stable group (what ``PartitionWriter.rejoin_if_stuck`` asks after a fence no other member
caused) gets the same generation back from a real broker; our rebalance listener still gives that assignment a
number of its own (``bus/faust/internals.py``, ``_RebalanceListener``). Under Faust's numbering the worker took the
new assignment for the old one and stayed fenced (the chaos run, broker stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from market_ingestor.bus.faust import internals as faust_internals

pytestmark = pytest.mark.kafka


class _Thread:
    """What the listener reaches of Faust's consumer thread: the aiokafka consumer, the app's assignment number,
    and the thread's rebalance calls (recorded)."""

    def __init__(self) -> None:
        self.client: AIOKafkaConsumer | None = None
        self.app = SimpleNamespace(consumer_generation_id=0, on_rebalance_start=lambda: None)
        self.numbers: asyncio.Queue[int] = asyncio.Queue()

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        assert self.client is not None
        return self.client

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int) -> None:
        self.numbers.put_nowait(generation_id)


def test_our_listener_numbers_a_repeated_generation_one_past_the_last() -> None:
    number = faust_internals.assignment_number
    assert number(7, 0) == 7  # a new worker: the group's generation
    assert number(7, 7) == 8  # the same generation again
    assert number(8, 8) == 9  # the group's next generation, already used as a number
    assert number(12, 9) == 12
    assert number(1, 12) == 13  # the group was deleted and made anew: numbers never go back


@contextlib.asynccontextmanager
async def _member(bootstrap: str, group: str, topic: str) -> AsyncIterator[tuple[AIOKafkaConsumer, _Thread]]:
    thread = _Thread()
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    thread.client = client
    await client.start()
    client.subscribe([topic], listener=faust_internals._RebalanceListener(thread))  # type: ignore[arg-type]
    polling = asyncio.create_task(_poll(client))
    try:
        yield client, thread
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await client.stop()


async def _poll(client: AIOKafkaConsumer) -> None:
    while True:
        await client.getmany(timeout_ms=100)


async def _next(numbers: asyncio.Queue[int]) -> int:
    return await asyncio.wait_for(numbers.get(), timeout=30)


async def test_a_follower_rejoining_a_stable_group_gets_the_same_generation_and_a_new_number(dev_stack) -> None:
    topic, group = f"rejoin-{uuid.uuid4().hex[:8]}", f"rejoin-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=dev_stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    async with _member(dev_stack.kafka_bootstrap, group, topic) as (_, leader):
        first = await _next(leader.numbers)  # the first member to join leads the group from then on
        async with _member(dev_stack.kafka_bootstrap, group, topic) as (follower_client, follower):
            joined = await _next(follower.numbers)
            assert await _next(leader.numbers) == joined > first
            await faust_internals.request_rejoin(_app_of(follower_client))
            again = await _next(follower.numbers)
            generation = follower_client._coordinator.generation
            assert generation == joined, "the broker bumped the generation: the case this listener is for is gone"
            assert again == joined + 1 and follower.app.consumer_generation_id == again
            assert leader.numbers.empty(), "the leader was not part of the follower's rejoin"


def _app_of(client: AIOKafkaConsumer) -> Any:
    """What ``request_rejoin`` reaches of a Faust app: its consumer's thread, which runs a call on the client."""

    async def call_thread(method: Any, *args: Any) -> Any:
        return await method(*args)

    thread = SimpleNamespace(_ensure_consumer=lambda: client, call_thread=call_thread)
    return SimpleNamespace(consumer=SimpleNamespace(_thread=thread))
