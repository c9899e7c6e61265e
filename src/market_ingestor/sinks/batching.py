"""Size-or-age batching with backpressure, shared by the Kafka (Faust) and NATS sinks.

A batch is flushed when it holds ``size`` records or when its oldest record is ``interval_s`` old, whichever
comes first. Flushes run one at a time (a lock): while one is being written, and retried while the database is
down, the next batch fills up to ``size`` and then :meth:`Batcher.add` waits for the flush. The caller stops
pulling records meanwhile, which is the backpressure: at most two batches are held, never more.

A flush that fails or is cancelled puts its records back in front of the buffer, so they are written by a later
flush and nothing behind them is committed before them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

R = TypeVar("R")


class Batcher(Generic[R]):
    def __init__(self, flush: Callable[[list[R]], Awaitable[None]], size: int, interval_s: float) -> None:
        self._flush = flush
        self.size = size
        self.interval_s = interval_s  # float-ok: a duration
        self._items: list[R] = []
        self._first_at = 0.0  # float-ok: monotonic time the oldest buffered record arrived
        self._lock = asyncio.Lock()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    async def add(self, record: R) -> None:
        self._append([record])
        if len(self._items) >= self.size:
            await self.flush()

    async def add_many(self, records: Iterable[R]) -> None:
        self._append(records)
        if len(self._items) >= self.size:
            await self.flush()

    def _append(self, records: Iterable[R]) -> None:
        was_empty = not self._items
        self._items.extend(records)
        if was_empty and self._items:
            self._first_at = time.monotonic()
            self._nonempty.set()

    async def flush(self) -> None:
        """Write every buffered record (after the flush in progress, if any); returns when they are durable."""
        async with self._lock:
            # Only what is buffered now: records added while these are written wait for their own trigger, so a
            # flush never turns into an endless loop of small batches under a steady stream.
            remaining = len(self._items)
            while remaining > 0:
                count = min(self.size, remaining)
                batch, self._items = self._items[:count], self._items[count:]
                remaining -= count
                if not self._items:
                    self._nonempty.clear()
                try:
                    await self._flush(batch)
                except BaseException:
                    self._restore(batch)
                    raise

    def _restore(self, batch: list[R]) -> None:
        self._items[:0] = batch
        self._first_at = time.monotonic()
        self._nonempty.set()

    async def run_timer(self) -> None:
        """Flushes a partial batch once its oldest record is ``interval_s`` old; runs until cancelled."""
        while True:
            await self._nonempty.wait()
            delay = self._first_at + self.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self.flush()
