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

from market_ingestor.streams.outputs import LIVE_FETCH_S, PartitionWriter

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
