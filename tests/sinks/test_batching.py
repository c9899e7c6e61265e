"""The batcher alone: size and age triggers, order, backpressure (bounded memory), drain, failed writes."""

from __future__ import annotations

import asyncio
import time

import pytest

from market_ingestor.sinks.batching import Batcher


class Recorder:
    """A flush target that records batches and can be held closed (a slow or unreachable database)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = 0

    async def __call__(self, batch: list[int]) -> None:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("database went away")
        self.batches.append(batch)

    @property
    def written(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


async def until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_full_batches_are_written_in_order_and_the_rest_once_old_enough():
    target = Recorder()
    batcher = Batcher(target, size=10, interval_s=0.2)
    flusher = asyncio.create_task(batcher.run())
    started = time.monotonic()
    for item in range(25):
        await batcher.add(item)
    await until(lambda: len(target.written) == 20)
    assert target.batches == [list(range(10)), list(range(10, 20))]
    await until(lambda: len(target.written) == 25)
    assert target.batches[-1] == list(range(20, 25))
    assert time.monotonic() - started >= 0.2  # the partial batch waited for its age, not less
    flusher.cancel()


async def test_a_blocked_write_stops_the_intake_at_two_batches():
    target = Recorder()
    target.gate.clear()  # the database hangs
    batcher = Batcher(target, size=10, interval_s=60)
    flusher = asyncio.create_task(batcher.run())

    async def intake() -> None:
        for item in range(100):
            await batcher.add(item)

    adding = asyncio.create_task(intake())
    await until(lambda: len(batcher) == 20)  # one batch being written, one full batch waiting
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(batcher) == 20 and not adding.done()
    target.gate.set()  # the database is back: everything flows, in order
    await adding
    await batcher.flush()
    assert target.written == list(range(100))
    flusher.cancel()


async def test_flush_writes_a_partial_batch_at_once_and_returns_when_it_is_written():
    target = Recorder()
    batcher = Batcher(target, size=1000, interval_s=3600)
    flusher = asyncio.create_task(batcher.run())
    await batcher.add_many([1, 2, 3])
    await asyncio.wait_for(batcher.flush(), 1)
    assert target.batches == [[1, 2, 3]]
    assert len(batcher) == 0
    await asyncio.wait_for(batcher.flush(), 1)  # nothing buffered: returns at once
    flusher.cancel()


async def test_a_failed_write_puts_its_batch_back_in_front():
    target = Recorder()
    target.fail_next = 1
    batcher = Batcher(target, size=3, interval_s=3600)
    flusher = asyncio.create_task(batcher.run())
    await batcher.add_many([1, 2, 3, 4])
    with pytest.raises(ConnectionError):
        await flusher
    assert len(batcher) == 4  # nothing lost, nothing reordered
    flusher = asyncio.create_task(batcher.run())
    await batcher.add(5)
    await batcher.flush()
    assert target.written == [1, 2, 3, 4, 5]
    flusher.cancel()


async def test_a_cancelled_write_puts_its_batch_back_too():
    target = Recorder()
    target.gate.clear()
    batcher = Batcher(target, size=2, interval_s=3600)
    flusher = asyncio.create_task(batcher.run())
    await batcher.add_many([1, 2])
    await until(lambda: len(batcher) == 2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batcher.flush(), 0.05)
    flusher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flusher
    assert len(batcher) == 2
    target.gate.set()
    flusher = asyncio.create_task(batcher.run())
    await batcher.flush()
    assert target.written == [1, 2]
    flusher.cancel()


async def test_batches_are_bounded_in_rows_and_never_split_an_item():
    target = Recorder()
    # Items weigh their own value: a record of that many rows.
    batcher: Batcher[int] = Batcher(target, size=10, interval_s=3600, weigh=lambda item: item)
    flusher = asyncio.create_task(batcher.run())
    await batcher.add_many([4, 4, 3, 10, 12, 1, 2])
    # 3 does not fit next to 4 + 4; 10 fills one; 12 is heavier than a batch: a batch of its own.
    await until(lambda: len(target.batches) == 4)  # these are due by size; 1 + 2 waits for its age
    for _ in range(20):
        await asyncio.sleep(0)
    assert target.batches == [[4, 4], [3], [10], [12]]
    assert len(batcher) == 3
    await batcher.flush()
    assert target.batches == [[4, 4], [3], [10], [12], [1, 2]]
    assert len(batcher) == 0
    flusher.cancel()


async def test_the_intake_waits_while_a_batch_worth_of_rows_is_buffered():
    target = Recorder()
    target.gate.clear()  # the database hangs
    batcher: Batcher[int] = Batcher(target, size=100, interval_s=3600, weigh=lambda item: item)
    flusher = asyncio.create_task(batcher.run())
    adding = asyncio.create_task(batcher.add_many([60, 60, 60]))  # being written: 60; buffered 120 >= 100
    await until(lambda: len(batcher) == 180)
    blocked = asyncio.create_task(batcher.add(5))
    for _ in range(20):
        await asyncio.sleep(0)
    assert adding.done() and not blocked.done() and len(batcher) == 180
    target.gate.set()
    await blocked
    await batcher.flush()
    assert target.written == [60, 60, 60, 5]
    flusher.cancel()


async def test_writes_overlap_but_commits_follow_them_in_batch_order():
    gates = [asyncio.Event() for _ in range(3)]
    written: list[list[int]] = []
    committed: list[list[int]] = []

    async def write(batch: list[int]) -> None:
        await gates[batch[0] // 10].wait()
        written.append(batch)

    async def commit(batch: list[int]) -> None:
        committed.append(batch)

    batcher = Batcher(write, size=10, interval_s=3600, commit=commit, writes_in_flight=2)
    flusher = asyncio.create_task(batcher.run())
    adding = asyncio.create_task(batcher.add_many(list(range(30))))
    await until(lambda: len(batcher) == 30 and adding.done())
    gates[1].set()  # the second batch's transaction ends first...
    await until(lambda: len(written) == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert written == [list(range(10, 20))] and committed == []  # ...but it is not committed before the first
    gates[0].set()
    await until(lambda: len(committed) == 2)
    assert committed == [list(range(10)), list(range(10, 20))]
    gates[2].set()
    await batcher.flush()
    assert committed == [list(range(10)), list(range(10, 20)), list(range(20, 30))]
    flusher.cancel()


async def test_a_failed_write_puts_back_every_batch_not_committed_yet_in_order():
    gate = asyncio.Event()
    committed: list[list[int]] = []
    fail = True

    async def write(batch: list[int]) -> None:
        nonlocal fail
        if batch[0] == 0 and fail:
            await gate.wait()
            fail = False
            raise ConnectionError("database went away")

    async def commit(batch: list[int]) -> None:
        committed.append(batch)

    batcher = Batcher(write, size=2, interval_s=3600, commit=commit, writes_in_flight=2)
    flusher = asyncio.create_task(batcher.run())
    await batcher.add_many([0, 1, 2, 3])
    await until(lambda: len(batcher) == 4)
    gate.set()
    with pytest.raises(ConnectionError):
        await flusher
    assert committed == [] and len(batcher) == 4  # the second batch was written, but not committed before the first
    flusher = asyncio.create_task(batcher.run())
    await batcher.flush()
    assert committed == [[0, 1], [2, 3]]
    flusher.cancel()
