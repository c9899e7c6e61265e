"""InputSequence: what the agents may process of the events Faust hands them (offset order, no holes). The
Faust app is a stand-in here that records seeks; the worker tests run the real thing after a kill -9."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaConnectionError
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.streams.sequence import InputSequence

P0, P1 = TP("t.market.trades", 0), TP("t.market.trades", 1)


class _Every:
    def __contains__(self, tp: object) -> bool:
        return True


class _Thread:
    """Faust's consumer thread as ``committed_at_broker`` uses it: aiokafka's ``committed`` through it."""

    def __init__(self) -> None:
        self.broker: dict[TP, int] = {}  # the group's committed offsets at the broker

    def _ensure_consumer(self) -> Any:
        return self

    async def call_thread(self, method: Any, *args: Any) -> Any:
        return await method(*args)

    async def committed(self, tp: Any) -> int | None:
        return self.broker.get(TP(tp.topic, tp.partition))


class _Consumer:
    def __init__(self, earliest: dict[TP, int]) -> None:
        self.earliest = earliest
        self.seeks: list[tuple[TP, int]] = []
        self.assigned: Any = _Every()  # every partition, unless a test revokes some
        self._thread = _Thread()

    def assignment(self) -> Any:
        return self.assigned

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeks.extend(offsets.items())

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.earliest[TP(*tp)] for tp in tps}


def _app(earliest: dict[TP, int] | None = None) -> Any:
    return SimpleNamespace(consumer=_Consumer(earliest or {}), consumer_generation_id=1)


def _events(tp: TP, *offsets: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset)) for offset in offsets]


def _offsets(events: list[Any]) -> list[tuple[int, int]]:
    return [(event.message.tp.partition, event.message.offset) for event in events]


async def test_in_order_events_pass_and_redelivered_ones_are_dropped():
    sequence = InputSequence(_app())
    assert _offsets(await sequence.in_order(_events(P0, 5, 6, 7), {P0: 5})) == [(0, 5), (0, 6), (0, 7)]
    assert _offsets(await sequence.in_order(_events(P0, 6, 7, 8), {P0: 5})) == [(0, 8)]


async def test_a_hole_seeks_back_and_drops_until_the_expected_offset_comes():
    app = _app()
    sequence = InputSequence(app)
    batch = _events(P0, 0, 1, 2, 300, 301) + _events(P1, 10, 11)
    assert _offsets(await sequence.in_order(batch, {P0: 0, P1: 10})) == [(0, 0), (0, 1), (0, 2), (1, 10), (1, 11)]
    assert app.consumer.seeks == [(P0, 3)]
    assert sequence.dropped == 2
    # More records from before the seek: dropped again, sought again; then the re-read ones pass in order.
    assert await sequence.in_order(_events(P0, 302, 303), {}) == []
    assert app.consumer.seeks == [(P0, 3), (P0, 3)]
    assert _offsets(await sequence.in_order(_events(P0, 3, 4), {})) == [(0, 3), (0, 4)]


async def test_a_hole_in_the_log_itself_is_accepted_once_the_seek_shows_it_again():
    app = _app()
    sequence = InputSequence(app)
    assert _offsets(await sequence.in_order(_events(P0, 7, 9, 10), {P0: 7})) == [(0, 7)]  # 8: a transaction marker
    assert app.consumer.seeks == [(P0, 8)]
    assert _offsets(await sequence.in_order(_events(P0, 9, 10), {})) == [(0, 9), (0, 10)]
    assert len(app.consumer.seeks) == 1


async def test_nothing_committed_starts_at_the_log_start():
    app = _app(earliest={P0: 40})
    sequence = InputSequence(app)
    assert await sequence.in_order(_events(P0, 45), {P0: None}) == []  # records 40..44 must come first
    assert app.consumer.seeks == [(P0, 40)]
    other = InputSequence(_app(earliest={P0: 0}))
    assert _offsets(await other.in_order(_events(P0, 0, 1), {P0: -1})) == [(0, 0), (0, 1)]  # -1: none committed


async def test_an_offset_not_known_to_faust_is_asked_of_the_broker_not_taken_for_nothing_committed():
    # After a fence and a new assignment Faust's record of the committed offsets can be missing: the sequence
    # started at the log start then, and read a partition again from offset 0 (seen in the chaos run).
    app = _app(earliest={P0: 0, P1: 0})
    app.consumer._thread.broker[P0] = 6747
    sequence = InputSequence(app)
    passed = await sequence.in_order(_events(P0, 6747, 6748) + _events(P1, 3), {P0: None, P1: None})
    assert _offsets(passed) == [(0, 6747), (0, 6748)]
    assert app.consumer.seeks == [(P1, 0)]  # nothing committed for P1 at the broker either: its log start


async def test_a_broker_that_cannot_tell_the_committed_offset_means_reading_from_the_log_start():
    app = _app(earliest={P0: 10})

    async def unreachable(tp: Any) -> int | None:
        raise KafkaConnectionError("the broker is away")

    app.consumer._thread.committed = unreachable
    sequence = InputSequence(app)
    assert await sequence.in_order(_events(P0, 40), {P0: None}) == []  # never skipped: read again from 10
    assert app.consumer.seeks == [(P0, 10)]


async def test_a_new_generation_starts_again_from_the_committed_offsets():
    app = _app()
    sequence = InputSequence(app)
    await sequence.in_order(_events(P0, 0, 1, 2), {P0: 0})
    app.consumer_generation_id = 2
    assert _offsets(await sequence.in_order(_events(P0, 1, 2), {P0: 1})) == [(0, 1), (0, 2)]
    assert app.consumer.seeks == []


async def test_expected_is_the_next_offset_taken_in_order_within_the_generation():
    app = _app()
    sequence = InputSequence(app)
    assert sequence.expected(P0) is None
    await sequence.in_order(_events(P0, 5, 6, 7), {P0: 5})
    assert sequence.expected(P0) == 8
    await sequence.in_order(_events(P0, 9), {P0: 5})  # a hole: not taken
    assert sequence.expected(P0) == 8
    app.consumer_generation_id = 2  # a rebalance: positions of the old generation mean nothing
    assert sequence.expected(P0) is None


class _EndsConsumer(_Consumer):
    def __init__(self, earliest: dict[TP, int], ends: dict[TP, int]) -> None:
        super().__init__(earliest)
        self.ends = ends

    def highwater(self, tp: TP) -> int | None:  # the end the last fetch brought: stale, not to be used
        raise AssertionError("the cached end of the last fetch was read")

    async def highwaters(self, *tps: TP) -> dict[TP, int]:  # the broker's answer now
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}


def _app_with_ends(ends: dict[TP, int], earliest: dict[TP, int] | None = None) -> Any:
    return SimpleNamespace(consumer=_EndsConsumer(earliest or {}, ends), consumer_generation_id=1)


async def test_records_in_the_log_that_never_come_are_read_again_after_the_stall_time():
    # Faust fetched offsets 4 and 5 and dropped them: no later record reveals the hole, the log end does.
    app = _app_with_ends({P0: 6, P1: 3})
    sequence = InputSequence(app)
    await sequence.in_order(_events(P0, 0, 1, 2, 3) + _events(P1, 0, 1, 2), {P0: 0, P1: 0})
    assert await sequence.resume_stalled([P0, P1], {}, stall_s=5.0, now=100.0) == []  # the clock starts
    assert await sequence.resume_stalled([P0, P1], {}, stall_s=5.0, now=104.9) == []
    assert await sequence.resume_stalled([P0, P1], {}, stall_s=5.0, now=105.0) == [P0]  # P1 is at its end
    assert app.consumer.seeks == [(P0, 4)]
    assert sequence.resumed == 1
    # The re-read records come: progress, no further seek.
    assert _offsets(await sequence.in_order(_events(P0, 4, 5), {})) == [(0, 4), (0, 5)]
    assert await sequence.resume_stalled([P0, P1], {}, stall_s=5.0, now=200.0) == []
    assert app.consumer.seeks == [(P0, 4)]


async def test_a_stall_at_an_unchanged_log_end_is_sought_once_and_again_when_the_end_moves():
    # Offsets past the last record that the consumer did not note as passed over (internals.skipped): the log end
    # stays past the expected offset with nothing delivered.
    app = _app_with_ends({P0: 8})
    sequence = InputSequence(app)
    await sequence.in_order(_events(P0, 5, 6), {P0: 5})
    await sequence.resume_stalled([P0], {}, stall_s=5.0, now=0.0)
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=5.0) == [P0]
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=50.0) == []  # the same end: once
    app.consumer.ends[P0] = 9  # a new record that does not come either
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=60.0) == [P0]
    assert app.consumer.seeks == [(P0, 7), (P0, 7)]


async def test_a_partition_none_of_whose_records_came_is_watched_from_its_committed_offset():
    app = _app_with_ends({P0: 10, P1: 4}, earliest={P1: 2})
    sequence = InputSequence(app)
    await sequence.resume_stalled([P0, P1], {P0: 7, P1: None}, stall_s=1.0, now=0.0)
    assert sorted(await sequence.resume_stalled([P0, P1], {}, stall_s=1.0, now=1.0)) == [P0, P1]
    assert sorted(app.consumer.seeks) == [(P0, 7), (P1, 2)]
    app.consumer_generation_id = 2  # a rebalance: Faust seeks to the committed offsets; the clocks start again
    assert await sequence.resume_stalled([P0], {P0: 8}, stall_s=1.0, now=1.5) == []


async def test_a_hole_in_a_partition_revoked_meanwhile_is_not_sought():
    # aiokafka refuses to seek a partition no longer assigned (IllegalStateError): the agent failed on it. The new
    # owner reads it from the committed offset.
    app = _app()
    app.consumer.assigned = {P1}
    sequence = InputSequence(app)
    batch = _events(P0, 0, 1, 300) + _events(P1, 10, 12)
    assert _offsets(await sequence.in_order(batch, {P0: 0, P1: 10})) == [(0, 0), (0, 1), (1, 10)]
    assert app.consumer.seeks == [(P1, 11)]


async def test_a_partition_forgotten_while_its_start_awaited_the_broker_is_not_passed_on():
    # CI: a fence came while the sequence asked the broker for a committed offset; the fence forgot the
    # partition, and the sequence then failed the agent looking for it (KeyError).
    app = _app()
    sequence = InputSequence(app)

    async def fenced_meanwhile(tp: Any) -> int | None:
        sequence.forget([P0])
        return 5

    app.consumer._thread.committed = fenced_meanwhile
    assert await sequence.in_order(_events(P0, 5, 6), {P0: None}) == []
    assert sequence.expected(P0) is None  # the answer from before the fence is not taken
    app.consumer._thread.committed = _Thread().committed
    assert _offsets(await sequence.in_order(_events(P0, 5, 6), {P0: 5})) == [(0, 5), (0, 6)]


async def test_a_partition_forgotten_before_its_start_starts_again():
    app = _app()
    sequence = InputSequence(app)
    await sequence.in_order(_events(P0, 0, 1), {P0: 0})
    sequence.forget([P0])
    assert _offsets(await sequence.in_order(_events(P0, 2), {P0: 2})) == [(0, 2)]


async def test_a_start_across_a_new_generation_is_void():
    app = _app()
    sequence = InputSequence(app)

    async def rebalanced_meanwhile(tp: Any) -> int | None:
        app.consumer_generation_id = 2
        return 5

    app.consumer._thread.committed = rebalanced_meanwhile
    assert await sequence.in_order(_events(P0, 5), {P0: None}) == []
    assert sequence.expected(P0) is None


async def test_offsets_the_consumer_passed_over_are_neither_a_hole_nor_a_stall(monkeypatch):
    # Under exactly_once every transaction leaves a marker in the log; each was taken for a hole (a seek and a
    # second fetch per transaction), and a marker ending the log for a stall (a warning a minute per partition).
    monkeypatch.setattr(faust_internals, "_skipped", {})
    key = (P0.topic, P0.partition)
    faust_internals._note_skipped(key, 3, 4)  # a commit marker
    faust_internals._note_skipped(key, 6, 8)  # an aborted batch...
    faust_internals._note_skipped(key, 8, 9)  # ...and its marker, noted on their own
    faust_internals._note_skipped(key, 11, 12)  # the marker ending the log
    app = _app_with_ends({P0: 12})
    sequence = InputSequence(app)
    passed = await sequence.in_order(_events(P0, 0, 1, 2, 4, 5, 9, 10), {P0: 0})
    assert _offsets(passed) == [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5), (0, 9), (0, 10)]
    assert app.consumer.seeks == [] and sequence.dropped == 0
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=0.0) == []
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=60.0) == []
    assert sequence.expected(P0) == 12 and app.consumer.seeks == []
    # A gap the consumer did not pass over (13 with 12 never delivered) is a hole as before.
    assert _offsets(await sequence.in_order(_events(P0, 13), {})) == []
    assert app.consumer.seeks == [(P0, 12)]


async def test_a_stall_is_timed_only_while_the_agent_waits_for_input():
    # A batch the agent takes seconds over (8 MB of klines for the indicator agent) takes nothing meanwhile: every
    # partition looked stalled and was read again.
    app = _app_with_ends({P0: 6})
    sequence = InputSequence(app)
    await sequence.in_order(_events(P0, 0, 1, 2, 3), {P0: 0})
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=100.0) == []
    sequence.busy(now=101.0)
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=110.0) == []  # 1 s of waiting so far
    sequence.idle(now=111.0)
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=114.9) == []  # 4.9 s
    assert await sequence.resume_stalled([P0], {}, stall_s=5.0, now=115.0) == [P0]
    assert app.consumer.seeks == [(P0, 4)]
