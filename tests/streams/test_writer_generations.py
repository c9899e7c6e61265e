"""A batch taken before a rebalance never reaches an agent after the next assignment (``PartitionWriter.batches``
and ``PartitionWriter.current``). Processed then, before the new generation's table recovery and while Faust
replaces every assigned partition's transactional producer, its outputs and rows could go into a transaction the
new producer aborts while its input offsets commit in the next one (docs/faust.md, "Revocations"). The Faust app
is a stand-in: the broker call that waits out the rebalance is its consumer thread's ``committed``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from market_ingestor.streams.outputs import InputLimits, PartitionWriter

P0, P1 = TP("t.market.trades", 0), TP("t.market.trades", 1)


class _Thread:
    """Faust's consumer thread as ``committed_at_broker`` uses it. The call waits while the consumer is in a
    rebalance: when it returns, the next generation has been assigned (seen in the chaos run's worker logs)."""

    def __init__(self, app: Any, broker: dict[TP, int]) -> None:
        self.app, self.broker = app, broker
        self.rebalance_during_call = False

    def _ensure_consumer(self) -> Any:
        return self

    async def call_thread(self, method: Any, *args: Any) -> Any:
        result = await method(*args)
        if self.rebalance_during_call:
            self.app.consumer_generation_id += 1
        return result

    async def committed(self, tp: Any) -> int | None:
        return self.broker.get(TP(tp.topic, tp.partition))


class _Consumer:
    def __init__(self, app: Any, assigned: set[TP], broker: dict[TP, int]) -> None:
        self.assigned = assigned
        self._committed_offset: dict[TP, int] = {}  # Faust's record: empty, as after a revocation forgot them
        self._thread = _Thread(app, broker)

    def assignment(self) -> set[TP]:
        return self.assigned

    def highwater(self, tp: TP) -> int | None:
        return None  # not known: nothing counts as behind

    async def _commit(self, offsets: dict[TP, int]) -> bool:  # what commit_offsets ends in: the broker's answer
        return True


class _Stream:
    def __init__(self, *takes: list[Any]) -> None:
        self.takes = takes

    async def take_events(self, records: int, within: float) -> AsyncIterator[list[Any]]:
        for take in self.takes:
            yield take


def _app(assigned: set[TP], broker: dict[TP, int], generation: int = 3) -> Any:
    app = SimpleNamespace(consumer_generation_id=generation, in_transaction=False)
    app.consumer = _Consumer(app, assigned, broker)
    return app


def _events(tp: TP, generation: int, *offsets: int) -> list[Any]:
    return [
        SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset, generation_id=generation), value=b"x")
        for offset in offsets
    ]


async def _batches(writer: PartitionWriter, stream: _Stream) -> list[list[Any]]:
    return [batch async for batch in writer.batches(stream, InputLimits(records=32, within_s=0.0))]


async def test_a_batch_goes_to_the_agent_when_its_generation_is_still_the_current_one() -> None:
    app = _app({P0}, broker={P0: 10})
    taken = await _batches(PartitionWriter(app), _Stream(_events(P0, 3, 10, 11)))
    assert [[event.message.offset for event in batch] for batch in taken] == [[10, 11]]


async def test_a_batch_whose_generation_ended_while_it_waited_for_the_broker_is_dropped() -> None:
    """The partition's committed offset is asked of the broker (the revocation forgot it); the call returns once
    the rebalance is over, the partition assigned again. Faust delivers those records again from the committed
    offset after the new generation's recovery; the agent must not see them now."""
    app = _app({P0}, broker={P0: 10})
    app.consumer._thread.rebalance_during_call = True
    taken = await _batches(PartitionWriter(app), _Stream(_events(P0, 3, 10, 11)))
    assert taken == []
    assert app.consumer_generation_id == 4  # the stand-in did rebalance


def test_current_keeps_the_events_of_the_current_generation_in_owned_partitions() -> None:
    app = _app({P0, P1}, broker={})
    writer = PartitionWriter(app)
    events = _events(P0, 2, 5) + _events(P0, 3, 6) + _events(P1, 3, 7)
    writer.forget({P1})  # revoked: the consumer still reports it until the next assignment
    assert [(event.message.tp, event.message.offset) for event in writer.current(events)] == [(P0, 6)]
    app.consumer_generation_id = 4  # the next assignment: taken in generation 3, none of them may be processed
    assert writer.current(events) == []


async def test_the_writers_own_commits_of_an_earlier_generation_are_not_its_next_offsets() -> None:
    """Until the new generation's first take, the writer's last commit is of the previous assignment: the kline
    agent's timer compares a partition's input mark with the committed offset Faust found at the assignment."""
    app = _app({P0}, broker={P0: 10})
    writer = PartitionWriter(app)
    await _batches(writer, _Stream(_events(P0, 3, 10, 11)))
    await writer.commit_input({P0: 12})
    assert writer.next_offset(P0) == 12
    app.consumer_generation_id = 4
    app.consumer._committed_offset[P0] = 20  # another worker went on from 12 meanwhile
    assert writer.next_offset(P0) == 20
