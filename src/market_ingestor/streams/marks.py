"""Input marks: a table's local rows checked against the committed input before an agent processes on them.

Every time an agent saves its rows and commits its input, it also saves per input partition an *input mark*: a row
``\\x00input-offset.<partition>`` of its table, in that partition's store, saved after the partition's other rows
(in the same transaction under ``exactly_once``) and holding the input offset that commit covers. Table recovery
can end with a partition's store behind its committed changelog (docs/faust.md, "Local rows behind the committed
input"); processed from the committed input offset on such rows, the agent's state would lack everything in
between, and nothing downstream could tell. The mark shows it: :meth:`InputMarks.checked` compares it with the
committed input offset the first time a partition is met in a generation. A partition found behind is rebuilt:
the agent forgets what it holds of it (``forget``: states, cached rows, open outputs), its local rows are
discarded, and the worker asks its group for a new assignment, whose recovery reads the changelog from its start;
logged as an error and counted (``worker_stale_partitions_total``).

A store without a mark (nothing saved yet, or rows from before the marks) is taken as it is. Both Faust agents
use this: the kline table (``streams/app.py``) and the indicator table (``streams/indicators.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import faust
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.streams import metrics
from market_ingestor.streams.outputs import PartitionWriter

log = logging.getLogger(__name__)

INPUT_MARK = b"\x00input-offset."


def input_mark_key(partition: int) -> bytes:
    return INPUT_MARK + str(partition).encode()


def is_input_mark(key: object) -> bool:
    return isinstance(key, bytes) and key.startswith(INPUT_MARK)


class InputMarks:
    """The input marks of one agent's ``table``, whose input partitions ``writer`` commits.

    ``forget``: drops what the agent holds in memory of the given input partitions (called with those found
    behind, before their local rows are discarded)."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        writer: PartitionWriter,
        agent: str,
        forget: Callable[[set[TP]], None],
    ) -> None:
        self.app = app
        self.table = table
        self.writer = writer
        self.agent = agent
        self._forget = forget
        self._checked: set[TP] = set()  # input partitions checked in generation _checked_in
        self._checked_in = -1

    async def save(self, done: Mapping[TP, int]) -> None:
        """The marks of ``done`` (input partition -> the next offset the commit after this covers), of the
        partitions still owned; after the rows they cover (a store holding the mark holds the rows before it)."""
        owned = self.writer.owned()
        for tp, offset in done.items():
            if tp in owned:
                await self.writer.save(self.table, input_mark_key(tp.partition), str(offset).encode(), tp)

    async def checked(self, sources: set[TP], sought: bool = True) -> set[TP]:
        """Those of ``sources`` whose local rows hold everything before the committed input offset, checked the
        first time each is met in a generation. ``sought``: the input was sought to its committed offsets in this
        generation (always so for the sources of a batch; a timer asks ``internals.inputs_sought``); until then
        only partitions already checked are returned."""
        generation = self.app.consumer_generation_id
        if generation != self._checked_in:
            self._checked.clear()
            self._checked_in = generation
        unchecked = sources - self._checked
        if not unchecked:
            return sources
        if not sought:
            return sources & self._checked
        behind: dict[TP, tuple[int, int]] = {}
        for tp in unchecked:
            committed = self.writer.next_offset(tp)
            mark = self.table.get(input_mark_key(tp.partition))
            if mark is not None and committed is not None and int(mark) < committed:
                behind[tp] = (int(mark), committed)
            else:
                self._checked.add(tp)
        if behind:
            log.error(
                "%s: local rows behind the committed input: %s; their partitions are rebuilt from the changelog "
                "after a new assignment, which this worker asks its group for",
                self.agent,
                ", ".join(f"partition {tp.partition} holds input to {mark}, committed {committed}"
                          for tp, (mark, committed) in sorted(behind.items())),
            )  # fmt: skip
            metrics.STALE_PARTITIONS.inc(len(behind))
            await self._rebuild(set(behind))
        return sources & self._checked

    async def _rebuild(self, behind: set[TP]) -> None:
        self._forget(behind)
        for tp in behind:
            faust_internals.discard_partition(self.app, self.table, tp.partition)
        await faust_internals.request_rejoin(self.app)
