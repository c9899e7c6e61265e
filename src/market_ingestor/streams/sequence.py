"""Input in offset order, without holes: what the agents may process of what Faust hands them.

faust-streaming 0.15.3 can deliver a partition's records with holes, in the same consumer generation. Its fetcher
runs in a thread; records fetched before a seek (the one at the end of a rebalance's recovery) can still be
delivered after it and move the consumer's read offset past the re-fetched ones, which it then drops as already
read. Seen after a worker was killed and restarted: the second rebalance of the new worker left a batch with
offsets 200..496 holding 200 records. Our state rows are idempotent by offset (a row stores the offset of the last
trade it applied), so a trade after a hole was applied and the ones in the hole were then taken for duplicates:
klines missed trades for good.

:class:`InputSequence` therefore passes on a partition's records only in order: the next offset expected, starting
at the committed offset (or the log start when nothing is committed). Re-delivered records (lower offsets) are
dropped; after a hole the partition is sought back to the expected offset, and the records behind the hole are
dropped until the expected one comes. A hole that is in the log itself (transaction markers, which read_committed
consumers never see; records removed by retention) shows up again at the same offset after the seek and is then
accepted: a seek costs a fetch, never progress.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import faust
from faust.types import TP

from market_ingestor.streams import faust_internals

log = logging.getLogger(__name__)


class InputSequence:
    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._expected: dict[TP, int] = {}  # next offset to pass on, per partition of this generation
        self._hole_at: dict[TP, int] = {}  # the first offset seen behind a hole we sought back over
        self._generation = -1
        self.dropped = 0  # records dropped because of a hole (counted for tests and the log)

    async def in_order(self, events: Sequence[Any], committed: dict[TP, int | None]) -> list[Any]:
        """The events that continue their partition's sequence; seeks back where a hole was found.

        ``committed``: the next offset to read per partition as last committed (None when unknown)."""
        generation = self.app.consumer_generation_id
        if generation != self._generation:  # a rebalance seeks every partition to its committed offset
            self._generation = generation
            self._expected.clear()
            self._hole_at.clear()
        unknown = {event.message.tp for event in events if event.message.tp not in self._expected}
        if unknown:
            await self._start(unknown, committed)
        passed: list[Any] = []
        holes: dict[TP, tuple[int, int]] = {}
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            expected = self._expected[tp]
            if offset == expected or (offset > expected and tp not in holes and self._hole_at.get(tp) == offset):
                hole_at = self._hole_at.pop(tp, None)
                if hole_at is not None and offset == expected:
                    log.warning("%s: records from %d had come before %d; read again in order", tp, hole_at, expected)
                elif offset != expected:
                    log.debug("%s: offsets %d..%d are not in the log (markers or retention)", tp, expected, offset - 1)
                self._expected[tp] = offset + 1
                passed.append(event)
            elif offset > expected:
                holes.setdefault(tp, (expected, offset))
                self.dropped += 1
        for tp, (expected, first) in holes.items():
            self._hole_at.setdefault(tp, first)
            log.debug("%s: record %d came before %d: reading again from %d", tp, first, expected, expected)
        if holes:  # in the consumer's thread, as Faust's own seeks (aiokafka is not thread-safe)
            await faust_internals.seek_back(self.app, {tp: expected for tp, (expected, _) in holes.items()})
        return passed

    async def _start(self, tps: Iterable[TP], committed: dict[TP, int | None]) -> None:
        known = {tp: offset for tp in tps if (offset := committed.get(tp)) is not None and offset >= 0}
        missing = [tp for tp in tps if tp not in known]
        earliest: dict[Any, int] = {}
        if missing:  # nothing committed (None, or -1): consumption starts at the log start (offset reset earliest)
            earliest = await faust_internals.log_start_offsets(self.app, missing)
        for tp in tps:
            self._expected[tp] = known[tp] if tp in known else earliest.get(tp, 0)

    def expected(self, tp: TP) -> int | None:
        """The next offset of ``tp`` to pass on in this generation (None before its first record)."""
        if self._generation != self.app.consumer_generation_id:
            return None
        return self._expected.get(tp)

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._expected.pop(tp, None)
            self._hole_at.pop(tp, None)
