"""``PartitionWriter.backlog``: the records of a partition not yet processed, which tell the kline timer whether
the wall clock may close windows. While the broker is away the last known end of the log is stale: the backlog
is unknown then, and no window closes (a chaos run closed a minute by the wall clock during a 30 s outage and
then published 301 corrections of it as the held trades came). The Faust app is a stand-in; the internal it reads
is checked by name in tests/bus/faust/test_internals.py."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from market_ingestor.streams.outputs import LIVE_FETCH_S, RESUMED_SETTLE_S, PartitionWriter

P0 = TP("t.market.trades", 0)


class _AiokafkaConsumer:
    def __init__(self) -> None:
        self.polled_ms: int | None = None

    def last_poll_timestamp(self, tp: Any) -> int | None:
        return self.polled_ms


def _app() -> Any:
    client = _AiokafkaConsumer()
    thread = SimpleNamespace(_ensure_consumer=lambda: client)
    consumer = SimpleNamespace(
        _thread=thread, _committed_offset={P0: 100}, assignment=lambda: {P0}, highwater=lambda tp: 130
    )
    return SimpleNamespace(consumer=consumer, consumer_generation_id=1, in_transaction=False)


def test_the_backlog_is_known_while_fetches_answer() -> None:
    app = _app()
    app.consumer._thread._ensure_consumer().polled_ms = int(time.time() * 1000)
    assert PartitionWriter(app).backlog(P0) == 30


def test_the_backlog_is_unknown_when_no_fetch_answered_lately_or_ever() -> None:
    app = _app()
    writer = PartitionWriter(app)
    assert writer.backlog(P0) is None  # no answer yet
    app.consumer._thread._ensure_consumer().polled_ms = int((time.time() - LIVE_FETCH_S - 1) * 1000)
    assert writer.backlog(P0) is None  # the broker away: the end known is stale


def test_after_a_gap_in_the_fetch_answers_the_backlog_stays_unknown_while_held_trades_may_still_come() -> None:
    # A chaos run, the broker away 27 s: the timer took the partition for caught up as soon as fetches answered
    # again, before ingest published the trades it held, and closed the outage minute (179 corrections followed).
    app = _app()
    client = app.consumer._thread._ensure_consumer()
    writer = PartitionWriter(app)
    now = time.time()
    client.polled_ms = int((now - 30) * 1000)
    assert writer.backlog(P0) is None  # away
    client.polled_ms = int(now * 1000)
    assert writer.backlog(P0) is None  # answering again, but only just: settling
    settled = PartitionWriter(app)
    client.polled_ms = int((now - 40) * 1000)
    settled.backlog(P0)
    seen = []
    for n in range(int(RESUMED_SETTLE_S) + 1):  # answers every second after the gap, the timer asking as they come
        polled = now - RESUMED_SETTLE_S - 2 + n
        client.polled_ms = int(polled * 1000)
        seen.append(settled.backlog(P0, now=polled + 0.1))
    assert seen[:-1] == [None] * (len(seen) - 1) and seen[-1] == 30  # known again once settled


def test_answers_without_a_gap_keep_the_backlog_known() -> None:
    app = _app()
    client = app.consumer._thread._ensure_consumer()
    writer = PartitionWriter(app)
    now = time.time()
    for age in (4.0, 3.0, 1.5, 0.2):
        client.polled_ms = int((now - age) * 1000)
        assert writer.backlog(P0) == 30
