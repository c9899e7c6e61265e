"""``KafkaBus.ensure_topics`` returns once every partition of its topics has a leader (a producer that sends
before gets NotLeaderForPartition and retries with a warning), or after a bounded wait, logged."""

from __future__ import annotations

import logging

from market_ingestor.bus.kafka import _await_leaders


class Admin:
    """Describes the topics as leaderless for the first ``elections`` calls."""

    def __init__(self, elections: int) -> None:
        self.elections = elections
        self.calls = 0

    async def describe_topics(self, topics: list[str]) -> list[dict[str, object]]:
        self.calls += 1
        leader = -1 if self.calls <= self.elections else 1
        return [
            {"topic": topic, "error_code": 0, "partitions": [{"error_code": 0, "partition": 0, "leader": leader}]}
            for topic in topics
        ]


async def test_it_waits_until_every_partition_has_a_leader():
    admin = Admin(elections=2)
    await _await_leaders(admin, ["a", "b"], wait_s=5)  # type: ignore[arg-type]
    assert admin.calls == 3


async def test_it_gives_up_after_the_wait_and_names_the_topics(caplog):
    admin = Admin(elections=10**6)
    with caplog.at_level(logging.WARNING, "market_ingestor.bus.kafka"):
        await _await_leaders(admin, ["a"], wait_s=0.2)  # type: ignore[arg-type]
    assert [(r.getMessage(), r.topics) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("topics still without a leader for every partition", ["a"])
    ]
