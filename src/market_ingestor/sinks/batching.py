"""Size-or-age batching with backpressure, shared by the Kafka (Faust) and the bus sinks.

A batch is written when it holds ``size`` records or when its oldest record is ``interval_s`` old, whichever
comes first. One flusher task (:meth:`Batcher.run`) writes the batches, one at a time and in order, while the
intake keeps filling the next one: fetching from the bus overlaps the database round trips. The intake waits in
:meth:`Batcher.add_many` while a full batch is already waiting, i.e. while the database is slow or down and a
write is being retried; that is the backpressure, and at most two batches (``2 * size`` records) are held.

A batch whose write fails or is cancelled goes back in front of the buffer, so nothing behind it is committed
before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R")


class Batcher(Generic[R]):
    def __init__(self, flush: Callable[[list[R]], Awaitable[None]], size: int, interval_s: float) -> None:
        self._flush = flush
        self.size = size
        self.interval_s = interval_s  # float-ok: a duration
        self._items: list[R] = []
        self._in_flight = 0
        self._first_at = 0.0  # float-ok: monotonic time the oldest buffered record arrived
        self._draining = 0
        self._wake = asyncio.Event()  # the flusher: first record, full batch, drain requested
        self._space = asyncio.Event()  # the intake: the buffer is below one batch again
        self._idle = asyncio.Event()  # nothing buffered, nothing being written
        self._space.set()
        self._idle.set()

    def __len__(self) -> int:
        """Records held: buffered or being written."""
        return len(self._items) + self._in_flight

    async def add(self, record: R) -> None:
        await self.add_many((record,))

    async def add_many(self, records: Sequence[R]) -> None:
        while len(self._items) >= self.size:  # a full batch waits for the flusher: wait with it
            self._space.clear()
            await self._space.wait()
        if not records:
            return
        if not self._items:
            self._first_at = time.monotonic()
            self._wake.set()
        self._items.extend(records)
        self._idle.clear()
        if len(self._items) >= self.size:
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
            batch = self._items[: self.size]
            del self._items[: self.size]
            self._in_flight = len(batch)
            self._space.set()
            try:
                await self._flush(batch)
            except BaseException:
                self._items[:0] = batch
                raise
            finally:
                self._in_flight = 0
            if not self._items:
                self._idle.set()

    async def _until_due(self) -> None:
        while True:
            if self._items:
                age_s = time.monotonic() - self._first_at
                if len(self._items) >= self.size or self._draining or age_s >= self.interval_s:
                    return
                timeout: float | None = self.interval_s - age_s  # float-ok: a duration
            else:
                timeout = None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
