"""Normalized JSON lines (``parse`` / ``klines`` output) -> the tables, through RowWriter (``db load``).

Lines are decoded and checked one by one; storable events (trades, klines, indicator values, quotes) go to the
writer in batches, each batch one transaction. Other events (book snapshots and deltas, dead letters, control
commands) are counted and skipped: they have no table. A bad line -- not JSON, not an event, or a trade no
kline could use (price not positive, quantity negative) -- is a :class:`BadLine` naming its number; with
``skip_bad`` it is reported through ``on_bad`` and loading goes on, otherwise loading stops there after writing
every line before it. Writes are idempotent, so loading a file again (after fixing it) changes nothing that
was already stored.

Rows older than their table's retention window (``retention``: table -> window, see
:func:`.schema.retention_windows`) would be written and then deleted by the next retention run; each batch's
count of them is passed to ``on_expired`` before the batch is written, and totalled in the summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import msgspec

from market_ingestor.errors import MarketIngestorError
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade, decode
from market_ingestor.sinks.writer import TABLES, RowWriter, WriteResult
from market_ingestor.validity import trade_problem

_STORABLE = (Trade, Kline, IndicatorValue, Quote)


class BadLine(MarketIngestorError):
    def __init__(self, line_no: int, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}")
        self.line_no = line_no
        self.reason = reason
        self.summary: LoadSummary | None = None  # what was loaded before it, when loading stopped here


class LoadSummary(msgspec.Struct):
    lines: int = 0  # non-empty lines read
    events: int = 0  # storable events sent to the writer
    not_stored: dict[str, int] = msgspec.field(default_factory=dict)  # event type -> count (no table for it)
    bad: int = 0
    result: WriteResult = msgspec.field(default_factory=WriteResult)
    expired: dict[str, int] = msgspec.field(default_factory=dict)  # table -> rows older than its retention window

    def add(self, result: WriteResult) -> None:
        self.result = WriteResult(
            **{name: getattr(self.result, name) + getattr(result, name) for name in WriteResult.__struct_fields__}
        )


def _problem(event: Any) -> str | None:
    if isinstance(event, Trade):
        return trade_problem(event)
    return None


class Expiry(msgspec.Struct, frozen=True):
    """The retention cutoffs a load checks its rows against: table -> epoch ns before which rows get dropped."""

    cutoffs_ns: dict[str, int]

    @classmethod
    def at(cls, now_ns: int, windows: dict[str, timedelta]) -> Expiry:
        return cls({table: now_ns - window // timedelta(microseconds=1) * 1000 for table, window in windows.items()})

    def count(self, batch: Sequence[Any]) -> dict[str, int]:
        found: dict[str, int] = {}
        for event in batch:
            table = TABLES[type(event)]
            cutoff = self.cutoffs_ns.get(table.name)
            if cutoff is not None and table.time_ns(event) < cutoff:
                found[table.name] = found.get(table.name, 0) + 1
        return found


async def load_lines(
    lines: Iterable[bytes],
    writer: RowWriter,
    *,
    batch_size: int = 10_000,
    skip_bad: bool = False,
    on_bad: Callable[[BadLine], object] = lambda bad: None,
    expiry: Expiry | None = None,
    on_expired: Callable[[str, int, int], object] = lambda table, count, cutoff_ns: None,
) -> LoadSummary:
    """Loads every line; raises :class:`BadLine` at the first bad one unless ``skip_bad``. ``on_expired(table,
    count, cutoff_ns)`` hears of rows past retention before the batch holding them is written."""
    summary = LoadSummary()
    batch: list[Trade | Kline | IndicatorValue | Quote] = []

    async def write() -> None:
        if expiry is not None:
            for table, count in expiry.count(batch).items():
                on_expired(table, count, expiry.cutoffs_ns[table])
                summary.expired[table] = summary.expired.get(table, 0) + count
        summary.add(await writer.write(batch))

    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        summary.lines += 1
        try:
            event = decode(line)
        except msgspec.MsgspecError as exc:
            problem: str | None = f"not a normalized event: {exc}"
        else:
            problem = _problem(event)
        if problem is not None:
            bad = BadLine(line_no, problem)
            if not skip_bad:
                if batch:
                    await write()
                bad.summary = summary
                raise bad
            summary.bad += 1
            on_bad(bad)
            continue
        if not isinstance(event, _STORABLE):
            kind = type(event).__name__
            summary.not_stored[kind] = summary.not_stored.get(kind, 0) + 1
            continue
        batch.append(event)
        summary.events += 1
        if len(batch) >= batch_size:
            await write()
            batch = []
    if batch:
        await write()
    return summary
