"""A client's outbox, pure: conflation, drop-oldest, the lost count and the lag clock."""

from __future__ import annotations

import pytest

from market_ingestor.push.outbox import Outbox

QUOTE_A, QUOTE_B, KLINE_A, TRADE_A = ("quote", "a"), ("quote", "b"), ("kline.1m", "a"), ("trade", "a")


def drain(outbox: Outbox) -> list[bytes]:
    frames = []
    while (frame := outbox.pop()) is not None:
        frames.append(frame)
    return frames


def test_frames_come_out_in_order_and_nothing_is_lost_below_the_size():
    outbox = Outbox(4)
    for n in range(4):
        assert outbox.put(b"t%d" % n, TRADE_A, False, now=1.0) == 0
    assert drain(outbox) == [b"t0", b"t1", b"t2", b"t3"]
    assert outbox.take_lost() == 0


def test_a_full_queue_drops_the_oldest_and_counts_it():
    outbox = Outbox(3)
    lost = [outbox.put(b"t%d" % n, TRADE_A, False, now=1.0) for n in range(5)]
    assert lost == [0, 0, 0, 1, 1]
    assert drain(outbox) == [b"t2", b"t3", b"t4"]
    assert outbox.take_lost() == 2
    assert outbox.take_lost() == 0


def test_quotes_are_conflated_per_pair_keeping_the_older_position():
    outbox = Outbox(10)
    outbox.put(b"qa1", QUOTE_A, True, now=1.0)
    outbox.put(b"qb1", QUOTE_B, True, now=1.0)
    outbox.put(b"t1", TRADE_A, False, now=1.0)
    assert outbox.put(b"qa2", QUOTE_A, True, now=1.0) == 1
    outbox.put(b"qa3", QUOTE_A, True, now=1.0)
    assert len(outbox) == 3
    assert drain(outbox) == [b"qa3", b"qb1", b"t1"]
    assert outbox.take_lost() == 2


def test_a_closed_kline_ends_conflation_so_the_next_window_never_jumps_ahead_of_it():
    outbox = Outbox(10)
    outbox.put(b"k0-progress", KLINE_A, True, now=1.0)
    outbox.put(b"k0-closed", KLINE_A, False, now=1.0)
    outbox.put(b"k1-progress-a", KLINE_A, True, now=1.0)
    outbox.put(b"k1-progress-b", KLINE_A, True, now=1.0)
    assert drain(outbox) == [b"k0-progress", b"k0-closed", b"k1-progress-b"]


def test_a_conflatable_frame_dropped_for_space_is_no_longer_a_conflation_target():
    outbox = Outbox(2)
    outbox.put(b"qa1", QUOTE_A, True, now=1.0)
    outbox.put(b"t1", TRADE_A, False, now=1.0)
    outbox.put(b"t2", TRADE_A, False, now=1.0)  # drops qa1
    outbox.put(b"qa2", QUOTE_A, True, now=1.0)  # appended (drops t1), not written into the dropped item
    assert drain(outbox) == [b"t2", b"qa2"]
    assert outbox.take_lost() == 2


def test_replies_without_a_key_are_queued_in_order():
    outbox = Outbox(4)
    outbox.put(b"qa1", QUOTE_A, True, now=1.0)
    outbox.put(b"pong", None, False, now=1.0)
    outbox.put(b"qa2", QUOTE_A, True, now=1.0)
    assert drain(outbox) == [b"qa2", b"pong"]


def test_behind_since_is_when_the_queue_became_non_empty_until_it_empties():
    outbox = Outbox(4)
    assert outbox.behind_since is None
    outbox.put(b"a", TRADE_A, False, now=5.0)
    outbox.put(b"b", TRADE_A, False, now=6.0)
    assert outbox.behind_since == 5.0
    assert outbox.pop() == b"a"
    assert outbox.behind_since == 5.0
    assert outbox.pop() == b"b"
    assert outbox.behind_since is None
    outbox.put(b"c", TRADE_A, False, now=9.0)
    assert outbox.behind_since == 9.0


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(0)


CLOSED_A0, CLOSED_A1 = (KLINE_A, 0), (KLINE_A, 60)  # what a closed kline is a revision of: (pair, open_time)


def test_a_newer_revision_replaces_the_queued_one_in_place_and_is_not_lost():
    outbox = Outbox(10)
    outbox.put(b"k0-closed-r0", KLINE_A, False, now=1.0, revision_of=CLOSED_A0)
    outbox.put(b"t1", TRADE_A, False, now=1.0)
    assert outbox.put(b"k0-closed-r1", KLINE_A, False, now=1.0, revision_of=CLOSED_A0) == 0
    assert outbox.put(b"k0-closed-r2", KLINE_A, False, now=1.0, revision_of=CLOSED_A0) == 0
    outbox.put(b"k1-closed-r0", KLINE_A, False, now=1.0, revision_of=CLOSED_A1)  # another window: its own slot
    assert drain(outbox) == [b"k0-closed-r2", b"t1", b"k1-closed-r0"]
    assert (outbox.take_lost(), outbox.superseded) == (0, 2)


def test_a_burst_of_corrections_takes_one_slot_per_kline_instead_of_overflowing():
    outbox = Outbox(4)
    lost = sum(
        outbox.put(b"k%d-r%d" % (window, revision), KLINE_A, False, 1.0, (KLINE_A, window))
        for revision in range(300)
        for window in (0, 60)
    )
    assert lost == 0 and drain(outbox) == [b"k0-r299", b"k60-r299"]


def test_a_revision_ends_conflation_and_is_no_conflation_target_itself():
    outbox = Outbox(10)
    outbox.put(b"k0-progress", KLINE_A, True, now=1.0)
    outbox.put(b"k0-closed-r0", KLINE_A, False, now=1.0, revision_of=CLOSED_A0)
    outbox.put(b"k1-progress-a", KLINE_A, True, now=1.0)  # after the closed one: never replaces it
    outbox.put(b"k0-closed-r1", KLINE_A, False, now=1.0, revision_of=CLOSED_A0)
    outbox.put(b"k1-progress-b", KLINE_A, True, now=1.0)
    assert drain(outbox) == [b"k0-progress", b"k0-closed-r1", b"k1-progress-b"]
    assert (outbox.take_lost(), outbox.superseded) == (1, 1)


def test_a_revision_sent_or_dropped_for_space_is_no_longer_replaced():
    outbox = Outbox(2)
    outbox.put(b"k0-r0", KLINE_A, False, now=1.0, revision_of=CLOSED_A0)
    assert outbox.pop() == b"k0-r0"  # on its way to the client: the next revision is queued, not merged
    outbox.put(b"k0-r1", KLINE_A, False, now=1.0, revision_of=CLOSED_A0)
    outbox.put(b"t1", TRADE_A, False, now=1.0)
    assert outbox.put(b"t2", TRADE_A, False, now=1.0) == 1  # k0-r1 dropped for space
    outbox.put(b"k0-r2", KLINE_A, False, now=1.0, revision_of=CLOSED_A0)
    assert drain(outbox) == [b"t2", b"k0-r2"]
    assert (outbox.take_lost(), outbox.superseded) == (2, 0)
