"""Input in offset order, without holes: what the agents may process of what Faust hands them.

faust-streaming 0.15.3 can deliver a partition's records with holes, and drop a partition's last records when its
set of active partitions changes during a fetch (docs/faust.md, "Lost records and holes"). :class:`InputSequence`
passes on a partition's records only in order from the committed offset, drops re-deliveries, seeks back over a
hole (a hole in the log itself is accepted after the seek; offsets the consumer passed over, transaction markers
and aborted batches, at once), and :meth:`InputSequence.resume_stalled` seeks back a partition whose log holds
records that have not come for ``stall_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals

log = logging.getLogger(__name__)

LOG_ENDS_TIMEOUT_S = 5.0  # the stall watch asks the broker for the log ends at most this long


class InputSequence:
    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._expected: dict[TP, int] = {}  # next offset to pass on, per partition of this generation
        self._hole_at: dict[TP, int] = {}  # the first offset seen behind a hole we sought back over
        self._generation = -1
        # Partitions with records past the expected offset: (expected, since when, log end at the last seek).
        self._waiting: dict[TP, tuple[int, float, int | None]] = {}
        self._forgets = 0  # how many times :meth:`forget` was called (a start that awaited across one is void)
        self._forgotten_in: dict[TP, int] = {}  # per partition: the value of ``_forgets`` at its last forget
        # Time the agent spent processing what it took (busy()/idle()): no record can be taken meanwhile, so a stall
        # is timed on the rest (an 8 MB batch of klines takes the indicator agent seconds; every partition then
        # looked stalled and was read again).
        self._busy_s = 0.0
        self._busy_since: float | None = None  # float-ok: monotonic seconds
        self.dropped = 0  # records dropped because of a hole (counted for tests and the log)
        self.resumed = 0  # seeks back over records that were in the log but never delivered

    async def in_order(self, events: Sequence[Any], committed: dict[TP, int | None]) -> list[Any]:
        """The events that continue their partition's sequence; seeks back where a hole was found.

        ``committed``: the next offset to read per partition as last committed (None when unknown)."""
        self._adopt_generation()
        unknown = {event.message.tp for event in events if event.message.tp not in self._expected}
        if unknown:
            await self._start(unknown, committed)
        passed: list[Any] = []
        holes: dict[TP, tuple[int, int]] = {}
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            expected = self._expected.get(tp)
            if expected is None:
                # Forgotten while the start awaited the broker (a fence, a revocation, a new generation): not
                # passed on. A later record of it starts the partition again; one past its start seeks back.
                continue
            if offset == expected or (
                offset > expected
                and tp not in holes
                and (self._hole_at.get(tp) == offset or faust_internals.skipped(tp, expected, offset))
            ):
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

    def busy(self, now: float | None = None) -> None:  # float-ok: monotonic seconds
        """The agent processes what it took: the stall clock stops until :meth:`idle`."""
        if self._busy_since is None:
            self._busy_since = time.monotonic() if now is None else now

    def idle(self, now: float | None = None) -> None:  # float-ok: monotonic seconds
        """The agent waits for input again."""
        if self._busy_since is not None:
            self._busy_s += (time.monotonic() if now is None else now) - self._busy_since
            self._busy_since = None

    def _waiting_clock(self, now: float) -> float:  # float-ok: monotonic seconds
        """Seconds of ``now`` during which the agent was not busy (only differences count)."""
        busy = self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        return now - busy

    async def resume_stalled(
        self, assigned: Iterable[TP], committed: dict[TP, int | None], stall_s: float, now: float | None = None
    ) -> list[TP]:
        """Seeks back each of the ``assigned`` input partitions whose log end has been past the expected offset for
        ``stall_s`` of the agent waiting for input with no record passed on (records Faust fetched and never
        delivered); again only once the log end has moved. Offsets the consumer passed over with nothing to deliver
        (a transaction marker ending the log, ``internals.skipped``) are not waited for. Returns the partitions
        sought.

        ``committed``: as for :meth:`in_order`, for partitions with no record yet in this generation."""
        self._adopt_generation()
        assigned = list(assigned)
        unknown = [tp for tp in assigned if tp not in self._expected]
        if unknown:
            await self._start(unknown, committed)
        # The log ends from the broker, not the ends the last fetch brought: a partition that is not fetched any
        # more (Faust left it out of its active set, see the module docs) keeps its old cached end, which then
        # equals the expected offset and hid the stall for good (seen under exactly_once after a fence).
        ends = await self._log_ends(assigned)
        clock = self._waiting_clock(time.monotonic() if now is None else now)
        stalled: dict[TP, int] = {}
        for tp in assigned:
            expected, end = self._expected.get(tp), ends.get(tp)
            if expected is None:
                continue  # forgotten (revoked, or lost to a fence) while the log starts were asked for
            if end is None or end <= expected:
                self._waiting.pop(tp, None)
                continue
            if faust_internals.skipped(tp, expected, end):  # e.g. the marker of the last transaction: nothing comes
                self._expected[tp] = end
                self._waiting.pop(tp, None)
                continue
            waiting = self._waiting.get(tp)
            if waiting is None or waiting[0] != expected:
                self._waiting[tp] = (expected, clock, None)
            elif clock - waiting[1] >= stall_s and waiting[2] != end:
                log.warning(
                    "%s: records %d..%d are in the log but none came in %.0f s of waiting for input; reading them "
                    "again",
                    tp,
                    expected,
                    end - 1,
                    clock - waiting[1],
                )
                stalled[tp] = expected
                self._waiting[tp] = (expected, clock, end)
        if stalled:
            self.resumed += len(stalled)
            await faust_internals.seek_back(self.app, stalled)
        return list(stalled)

    async def _log_ends(self, tps: list[TP]) -> dict[TP, int]:
        """Each partition's end as the broker has it now (the last stable offset under ``read_committed``); {}
        while the broker cannot tell (the next tick asks again)."""
        if not tps:
            return {}
        consumer: Any = self.app.consumer
        try:  # bounded: with the broker away the call waits out aiokafka's request timeout
            return dict(await asyncio.wait_for(consumer.highwaters(*tps), LOG_ENDS_TIMEOUT_S))
        except (KafkaError, TimeoutError) as exc:
            log.info("log ends not read: %r", exc)
            return {}

    def _adopt_generation(self) -> None:
        generation = self.app.consumer_generation_id
        if generation != self._generation:  # a rebalance seeks every partition to its committed offset
            self._generation = generation
            self._expected.clear()
            self._hole_at.clear()
            self._waiting.clear()

    async def _start(self, tps: Iterable[TP], committed: dict[TP, int | None]) -> None:
        """Sets where each of ``tps`` starts in this generation; not for a partition forgotten (or a generation
        left) while the broker was asked: the fence or revocation that forgot it is newer than this answer."""
        tps = list(tps)
        generation, forgets = self._generation, self._forgets
        known = {tp: offset for tp in tps if (offset := committed.get(tp)) is not None and offset >= 0}
        missing = [tp for tp in tps if tp not in known]
        if missing:  # not known here (Faust's record of it can be missing, e.g. after a fence): the broker's
            try:
                known.update(await faust_internals.committed_at_broker(self.app, missing))
            except (KafkaError, TimeoutError) as exc:  # from the log start then: read again, never skipped
                log.warning("committed offsets of %s not read (%r): reading them from the log start", missing, exc)
            missing = [tp for tp in missing if tp not in known]
        earliest: dict[Any, int] = {}
        if missing:  # nothing committed: consumption starts at the log start (offset reset earliest)
            earliest = await faust_internals.log_start_offsets(self.app, missing)
        if self.app.consumer_generation_id != generation:
            return
        for tp in tps:
            if self._forgotten_in.get(tp, -1) >= forgets:
                continue
            self._expected[tp] = known[tp] if tp in known else earliest.get(tp, 0)

    def expected(self, tp: TP) -> int | None:
        """The next offset of ``tp`` to pass on in this generation (None before its first record)."""
        if self._generation != self.app.consumer_generation_id:
            return None
        return self._expected.get(tp)

    def forget(self, tps: Iterable[TP]) -> None:
        forgets = self._forgets
        self._forgets += 1
        for tp in tps:
            self._forgotten_in[tp] = forgets
            self._expected.pop(tp, None)
            self._hole_at.pop(tp, None)
            self._waiting.pop(tp, None)
