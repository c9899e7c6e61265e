"""Input marks, pure: a table's local rows checked against the committed input (streams/marks.py). The worker
test (test_worker_recovery.py) puts old rows back under a real worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.streams import metrics
from market_ingestor.streams.marks import InputMarks, input_mark_key, is_input_mark

P0, P1, P2 = (TP("t.market.trades", n) for n in range(3))


class Writer:
    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.assigned = {P0, P1, P2}

    def owned(self) -> set[TP]:
        return self.assigned

    def next_offset(self, tp: TP) -> int | None:
        return self.committed.get(tp)

    async def save(self, table: dict[bytes, bytes], key: bytes, value: bytes, source: TP) -> None:
        table[key] = value


def marks(committed: dict[TP, int | None], table: dict[bytes, bytes] | None = None) -> tuple[InputMarks, list[Any]]:
    forgotten: list[set[TP]] = []
    app = SimpleNamespace(consumer_generation_id=1)
    table = {} if table is None else table
    return InputMarks(app, table, Writer(committed), "klines", forgotten.append), forgotten  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def faust_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What a rebuild asks of Faust (its internals have their own named tests in tests/bus/faust)."""
    calls: list[tuple[str, Any]] = []

    async def request_rejoin(app: Any) -> None:
        calls.append(("rejoin", None))

    monkeypatch.setattr(faust_internals, "discard_partition", lambda app, table, n: calls.append(("discard", n)))
    monkeypatch.setattr(faust_internals, "request_rejoin", request_rejoin)
    return calls


async def test_the_marks_of_owned_partitions_are_saved_and_a_mark_at_the_committed_offset_passes():
    checked, rebuilt = marks({P0: 40, P1: 7})
    checked.writer.assigned = {P0, P1}  # type: ignore[attr-defined]
    await checked.save({P0: 40, P1: 7, P2: 3})
    assert checked.table == {input_mark_key(0): b"40", input_mark_key(1): b"7"}
    assert await checked.checked({P0, P1}) == {P0, P1} and rebuilt == []


async def test_a_mark_behind_the_committed_offset_is_rebuilt_counted_and_not_processed(faust_calls):
    table = {input_mark_key(0): b"40", input_mark_key(1): b"7"}
    checked, rebuilt = marks({P0: 55, P1: 7}, table)
    before = metrics.STALE_PARTITIONS._value.get()
    assert await checked.checked({P0, P1}) == {P1}
    assert rebuilt == [{P0}] and metrics.STALE_PARTITIONS._value.get() == before + 1
    assert faust_calls == [("discard", 0), ("rejoin", None)]  # the local rows, then a new assignment
    # Not passed later in the same generation either; the next generation checks again.
    assert await checked.checked({P0, P1}) == {P1} and rebuilt == [{P0}, {P0}]
    checked.writer.committed[P0] = 40  # type: ignore[attr-defined]
    checked.app.consumer_generation_id = 2
    assert await checked.checked({P0}) == {P0}


async def test_no_mark_or_no_known_committed_offset_is_taken_as_it_is():
    checked, rebuilt = marks({P0: 55, P1: None}, {input_mark_key(1): b"3"})
    assert await checked.checked({P0, P1}) == {P0, P1} and rebuilt == []


async def test_before_the_input_was_sought_only_checked_partitions_pass():
    checked, rebuilt = marks({P0: 5, P1: 5}, {input_mark_key(0): b"5", input_mark_key(1): b"5"})
    assert await checked.checked({P0}) == {P0}
    assert await checked.checked({P0, P1}, sought=False) == {P0}
    assert await checked.checked({P0, P1}) == {P0, P1} and rebuilt == []


def test_a_mark_key_is_told_from_an_instrument_key():
    assert is_input_mark(input_mark_key(11)) and not is_input_mark(b"binance.BTCUSDT") and not is_input_mark("x")
