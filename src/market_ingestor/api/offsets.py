"""Throughput per stage and consumer lag, from Kafka offsets alone: nothing in the services has to report them.

Every ``api.panel_refresh_s`` the API reads the end offsets (last stable offsets: what a ``read_committed``
consumer can reach) of the pipeline's topics and the committed offsets of the consumer groups. A stage's output
rate is the growth of the end offsets of the topics it writes (ingest: trades, quotes, book; worker: klines,
indicators), its input rate the growth of its group's committed offsets; lag is end - committed, per group, topic
and partition. Rates are taken over the last few samples, so one commit that lands just after a sample does not
make the figure jump. Counts are offsets: with transactional producers a commit marker takes an offset too.

Bounded: a fixed set of topics and groups, a few samples each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from market_ingestor.config import Config
from market_ingestor.model import Topics

log = logging.getLogger(__name__)

TopicPart = tuple[str, int]  # (logical topic, partition)

# Which stage writes which topics (their end offsets are its output).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "ingest": (Topics.TRADES, Topics.QUOTES, Topics.BOOK),
    "worker": (Topics.KLINES, Topics.INDICATORS),
}
STAGE_ORDER = ("ingest", "worker", "sink", "api")
WATCHED_TOPICS: tuple[str, ...] = tuple(topic for topics in OUTPUTS.values() for topic in topics)


def consumer_groups(config: Config) -> dict[str, str]:
    """Stage -> its Kafka consumer group: the worker is the Faust app itself, the sink and the API's ticker
    table run in groups of their own."""
    app_id = config.streams.app_id
    return {"worker": app_id, "sink": f"{app_id}-sink", "api": f"{app_id}-api"}


class Throughput(msgspec.Struct, frozen=True):
    stage: str
    direction: Literal["in", "out"]
    topic: str
    per_s: float  # float-ok: a rate, offsets per second


class PartitionLag(msgspec.Struct, frozen=True):
    partition: int
    end: int
    committed: int
    lag: int


class GroupLag(msgspec.Struct, frozen=True):
    stage: str
    group: str
    topic: str
    lag: int
    partitions: list[PartitionLag]


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # float-ok: monotonic seconds
    end: Mapping[TopicPart, int]
    committed: Mapping[str, Mapping[TopicPart, int]]  # stage -> offsets of its group on watched topics


def _growth(old: Mapping[TopicPart, int], new: Mapping[TopicPart, int], topic: str) -> int:
    # A partition seen only now, or an offset that went back (topic recreated, group reset), counts as no growth.
    return sum(max(0, offset - old[tp]) for tp, offset in new.items() if tp[0] == topic and tp in old)


def throughput(old: Sample, new: Sample) -> list[Throughput]:
    elapsed_s = new.at_s - old.at_s
    if elapsed_s <= 0:
        return []
    rows = [
        Throughput(stage, "out", topic, _growth(old.end, new.end, topic) / elapsed_s)
        for stage, topics in OUTPUTS.items()
        for topic in topics
    ]
    for stage, offsets in new.committed.items():
        before = old.committed.get(stage, {})
        for topic in sorted({tp[0] for tp in offsets}):
            rows.append(Throughput(stage, "in", topic, _growth(before, offsets, topic) / elapsed_s))
    # In pipeline order: a stage's input, then its output.
    order = {stage: n for n, stage in enumerate(STAGE_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r.stage, len(order)), r.direction != "in", r.topic))


def lag(sample: Sample, groups: Mapping[str, str]) -> list[GroupLag]:
    rows = []
    for stage, offsets in sample.committed.items():
        for topic in sorted({tp[0] for tp in offsets}):
            partitions = [
                PartitionLag(p, sample.end[(t, p)], committed, max(0, sample.end[(t, p)] - committed))
                for (t, p), committed in sorted(offsets.items())
                if t == topic and (t, p) in sample.end
            ]
            rows.append(GroupLag(stage, groups[stage], topic, sum(p.lag for p in partitions), partitions))
    return rows


class OffsetMonitor:
    """Samples offsets until cancelled (:meth:`run`); :meth:`throughput` and :meth:`lag` read the latest."""

    def __init__(self, config: Config, interval_s: float, window: int = 5) -> None:  # float-ok: seconds
        self.kafka = config.bus.kafka
        self.prefix = config.bus.topic_prefix
        self.groups = consumer_groups(config)
        self.interval_s = interval_s  # float-ok: seconds
        self.samples: deque[Sample] = deque(maxlen=window + 1)
        self.error: str | None = None

    def throughput(self) -> list[Throughput]:
        return throughput(self.samples[0], self.samples[-1]) if len(self.samples) > 1 else []

    def lag(self) -> list[GroupLag]:
        return lag(self.samples[-1], self.groups) if self.samples else []

    async def run(self) -> None:
        """Samples every ``interval_s``; a failed sample is recorded in :attr:`error` and retried."""
        kafka = self.kafka
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id=f"{kafka.client_id}-panel")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            client_id=f"{kafka.client_id}-panel",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        try:
            # A broker that cannot be reached here ends run(): the caller restarts it with new clients.
            await admin.start()
            await consumer.start()
            while True:
                try:
                    sample = await asyncio.wait_for(self._sample(admin, consumer), timeout=10 * self.interval_s)
                    self.samples.append(sample)
                    self.error = None
                except (KafkaError, TimeoutError) as exc:
                    self.error = f"offsets: {exc!r}"
                    log.warning("could not read offsets", extra={"reason": repr(exc)})
                await asyncio.sleep(self.interval_s)
        finally:
            await consumer.stop()
            await admin.close()

    async def _sample(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> Sample:
        physical = {self.prefix + topic: topic for topic in WATCHED_TOPICS}
        partitions = [
            TopicPartition(described["topic"], p["partition"])
            for described in await admin.describe_topics(list(physical))
            if not described["error_code"]
            for p in described["partitions"]
        ]
        end = await consumer.end_offsets(partitions) if partitions else {}
        committed: dict[str, dict[TopicPart, int]] = {}
        for stage, group in self.groups.items():
            offsets = await admin.list_consumer_group_offsets(group)
            committed[stage] = _logical(
                ((tp, meta.offset) for tp, meta in offsets.items() if meta.offset >= 0), physical
            )
        return Sample(time.monotonic(), _logical(end.items(), physical), committed)


def _logical(offsets: Iterable[tuple[TopicPartition, int]], physical: Mapping[str, str]) -> dict[TopicPart, int]:
    return {(physical[tp.topic], tp.partition): offset for tp, offset in offsets if tp.topic in physical}
