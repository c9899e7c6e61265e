"""A fence that no rebalance follows (a producer failed for another reason than another member taking over) makes
the worker ask its group for a new assignment (``PartitionWriter.rejoin_if_stuck``). The Faust app is a stand-in
that records the rejoin requests; the real fence path runs in tests/streams/test_worker_recovery.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from market_ingestor.streams.outputs import FENCE_REJOIN_S, PartitionWriter


class _Coordinator:
    def __init__(self) -> None:
        self.rejoins = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


class _Thread:
    def __init__(self) -> None:
        self.client = SimpleNamespace(_coordinator=_Coordinator())

    def _ensure_consumer(self) -> Any:
        return self.client

    async def call_thread(self, method: Any, *args: Any) -> Any:
        return await method(*args)


def _app() -> Any:
    consumer = SimpleNamespace(_thread=_Thread(), assignment=lambda: set())
    return SimpleNamespace(
        consumer=consumer,
        consumer_generation_id=3,
        rebalancing=False,
        should_stop=False,
        in_transaction=True,
        timer=lambda *args, **kwargs: lambda method: method,
    )


def _fenced_writer(app: Any) -> PartitionWriter:
    writer = PartitionWriter(app)
    writer._fence(RuntimeError("the producer's sender died"))
    return writer


async def test_a_fence_without_a_new_assignment_asks_the_group_once_per_generation() -> None:
    app = _app()
    writer = _fenced_writer(app)
    coordinator = app.consumer._thread.client._coordinator
    start = writer._fenced_at
    assert not await writer.rejoin_if_stuck(now=start + FENCE_REJOIN_S - 1)  # a rebalance may still be coming
    assert await writer.rejoin_if_stuck(now=start + FENCE_REJOIN_S)
    assert not await writer.rejoin_if_stuck(now=start + 10 * FENCE_REJOIN_S)  # asked already in this generation
    assert coordinator.rejoins == 1


async def test_a_new_assignment_or_a_rebalance_under_way_asks_nothing() -> None:
    app = _app()
    writer = _fenced_writer(app)
    coordinator = app.consumer._thread.client._coordinator
    app.rebalancing = True
    assert not await writer.rejoin_if_stuck(now=writer._fenced_at + FENCE_REJOIN_S)
    app.rebalancing = False
    app.consumer_generation_id = 4  # the assignment the fence normally brings: not fenced any more
    assert not writer.fenced
    assert not await writer.rejoin_if_stuck(now=writer._fenced_at + 10 * FENCE_REJOIN_S)
    assert coordinator.rejoins == 0
