"""Size-or-age batching with backpressure, for the sink: bus records in, one database transaction per batch out.

A batch is written when it holds ``size`` rows or when its oldest record is ``interval_s`` old, whichever comes
first. Items are weighed (``weigh``: a bus record of a hot topic holds many rows), and a batch is the longest
run of buffered items whose rows fit in ``size``: an item is never split across two batches, so its offset can
be committed once the one transaction holding all its rows is done. An item heavier than ``size`` on its own is
a batch of its own.

One flusher task (:meth:`Batcher.run`) writes the batches, one at a time and in order, while the intake keeps
filling the next one: fetching from the bus overlaps the database round trips. The intake waits in
:meth:`Batcher.add` while a full batch is already waiting, i.e. while the database is slow or down and a write
is being retried; that is the backpressure, and at most about two batches (``2 * size`` rows, plus one item) are
held.

A batch whose write fails or is cancelled goes back in front of the buffer, so nothing behind it is committed
before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R")


def _one(_: object) -> int:
    return 1


class Batcher(Generic[R]):
    def __init__(
        self,
        flush: Callable[[list[R]], Awaitable[None]],
        size: int,
        interval_s: float,  # float-ok: a duration
        weigh: Callable[[R], int] = _one,
    ) -> None:
        self._flush = flush
        self.size = size
        self.interval_s = interval_s  # float-ok: a duration
        self._weigh = weigh
        self._items: deque[tuple[R, int]] = deque()  # (item, its weight), oldest first
        self._buffered = 0  # the weight of _items
        self._in_flight = 0  # the weight of the batch being written
        self._first_at = 0.0  # float-ok: monotonic time the oldest buffered item arrived
        self._draining = 0
        self._wake = asyncio.Event()  # the flusher: first item, full batch, drain requested
        self._space = asyncio.Event()  # the intake: the buffer is below one batch again
        self._idle = asyncio.Event()  # nothing buffered, nothing being written
        self._space.set()
        self._idle.set()

    def __len__(self) -> int:
        """Rows held: buffered or being written."""
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
        """Writes everything buffered now, without waiting for size or age; returns when it is durable.
        Needs :meth:`run` to be running."""
        self._draining += 1
        self._wake.set()
        try:
            await self._idle.wait()
        finally:
            self._draining -= 1

    async def run(self) -> None:
        """The flusher; runs until cancelled. A write that raises ends it (after putting the batch back)."""
        while True:
            await self._until_due()
            batch = self._take()
            self._space.set()
            try:
                await self._flush([item for item, _ in batch])
            except BaseException:
                self._items.extendleft(reversed(batch))
                self._buffered += self._in_flight
                raise
            finally:
                self._in_flight = 0
            if not self._items:
                self._idle.set()

    def _take(self) -> list[tuple[R, int]]:
        """The oldest items whose weights fit in one batch (at least one item)."""
        batch = [self._items.popleft()]
        weight = batch[0][1]
        while self._items and weight + self._items[0][1] <= self.size:
            item = self._items.popleft()
            batch.append(item)
            weight += item[1]
        self._buffered -= weight
        self._in_flight = weight
        return batch

    async def _until_due(self) -> None:
        while True:
            if self._items:
                age_s = time.monotonic() - self._first_at
                if self._buffered >= self.size or self._draining or age_s >= self.interval_s:
                    return
                timeout: float | None = self.interval_s - age_s  # float-ok: a duration
            else:
                timeout = None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
