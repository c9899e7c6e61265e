"""Size-or-age batching with backpressure, for the sink: bus records in, one database transaction per batch out.

A batch is written when it holds ``size`` rows or when its oldest record is ``interval_s`` old, whichever comes
first. Items are weighed (``weigh``: a bus record of a hot topic holds many rows), and a batch is the longest
run of buffered items whose rows fit in ``size``: an item is never split across two batches, so its offset can
be committed once the one transaction holding all its rows is done. An item heavier than ``size`` on its own is
a batch of its own.

Each batch goes through two steps: ``write`` (the transaction) and then ``commit`` (its records' offsets). Up to
``writes_in_flight`` writes run at the same time, so the database works on one batch while this process encodes
the next; commits always run one at a time in batch order, each after its own write and every earlier commit,
so an offset is never committed past a batch that is not stored. The intake keeps filling the next batch
meanwhile and waits in :meth:`Batcher.add` while a full batch is already waiting, i.e. while the database is slow
or down and a write is being retried; that is the backpressure: at most ``writes_in_flight + 1`` batches (plus
one item) are held.

Batches whose write fails or is cancelled go back in front of the buffer, in order, with every later batch not
committed yet, so nothing behind them is committed before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R")
Step = Callable[[list[R]], Awaitable[None]]


def _one(_: object) -> int:
    return 1


async def _nothing(_: list[R]) -> None:
    pass


class Batcher(Generic[R]):
    def __init__(
        self,
        write: Step[R],
        size: int,
        interval_s: float,  # float-ok: a duration
        weigh: Callable[[R], int] = _one,
        *,
        commit: Step[R] = _nothing,
        writes_in_flight: int = 1,
    ) -> None:
        self._write = write
        self._commit = commit
        self.size = size
        self.interval_s = interval_s  # float-ok: a duration
        self.writes_in_flight = writes_in_flight
        self._weigh = weigh
        self._items: deque[tuple[R, int]] = deque()  # (item, its weight), oldest first
        self._buffered = 0  # the weight of _items
        self._in_flight = 0  # the weight of the batches being written or committed
        self._first_at = 0.0  # float-ok: monotonic time the oldest buffered item arrived
        self._draining = 0
        self._wake = asyncio.Event()  # the flusher: first item, full batch, drain requested, a write done
        self._space = asyncio.Event()  # the intake: the buffer is below one batch again
        self._idle = asyncio.Event()  # nothing buffered, nothing being written
        self._space.set()
        self._idle.set()

    def __len__(self) -> int:
        """Rows held: buffered, being written or being committed."""
        return self._buffered + self._in_flight

    async def add(self, item: R) -> None:
        await self.add_many((item,))

    async def add_many(self, items: Sequence[R]) -> None:
        while self._buffered >= self.size:  # a full batch waits for the flusher: wait with it
            self._space.clear()
            await self._space.wait()
        if not items:
            return
        if not self._items:
            self._first_at = time.monotonic()
            self._wake.set()
        for item in items:
            weight = self._weigh(item)
            self._items.append((item, weight))
            self._buffered += weight
        self._idle.clear()
        if self._buffered >= self.size:
            self._wake.set()

    async def flush(self) -> None:
        """Writes and commits everything buffered now, without waiting for size or age; returns when it is
        durable. Needs :meth:`run` to be running."""
        self._draining += 1
        self._wake.set()
        try:
            await self._idle.wait()
        finally:
            self._draining -= 1

    async def run(self) -> None:
        """The flusher; runs until cancelled. A write or commit that raises ends it (after putting the batches
        not committed back in front)."""
        writing: deque[tuple[list[tuple[R, int]], asyncio.Task[None]]] = deque()
        try:
            while True:
                if writing and (writing[0][1].done() or len(writing) >= self.writes_in_flight):
                    batch, task = writing[0]
                    await task  # raises what the write raised
                    await self._commit([item for item, _ in batch])
                    writing.popleft()
                    self._in_flight -= sum(weight for _, weight in batch)
                    if not self._items and not writing:
                        self._idle.set()
                elif await self._until_due():
                    batch = self._take()
                    self._space.set()
                    writing.append((batch, asyncio.ensure_future(self._write([item for item, _ in batch]))))
                    writing[-1][1].add_done_callback(lambda _: self._wake.set())
        except BaseException:
            for _, task in writing:
                task.cancel()
            await asyncio.gather(*(task for _, task in writing), return_exceptions=True)
            for batch, _ in reversed(writing):
                self._items.extendleft(reversed(batch))
                self._buffered += sum(weight for _, weight in batch)
            self._in_flight = 0
            raise

    def _take(self) -> list[tuple[R, int]]:
        """The oldest items whose weights fit in one batch (at least one item)."""
        batch = [self._items.popleft()]
        weight = batch[0][1]
        while self._items and weight + self._items[0][1] <= self.size:
            item = self._items.popleft()
            batch.append(item)
            weight += item[1]
        self._buffered -= weight
        self._in_flight += weight
        return batch

    async def _until_due(self) -> bool:
        """Waits until a batch is due (True) or something else needs the flusher, e.g. a write finished."""
        if self._items:
            age_s = time.monotonic() - self._first_at
            if self._buffered >= self.size or self._draining or age_s >= self.interval_s:
                return True
            timeout: float | None = self.interval_s - age_s  # float-ok: a duration
        else:
            timeout = None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        return False
