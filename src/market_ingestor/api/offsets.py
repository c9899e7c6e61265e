"""Throughput per stage and consumer lag, from the bus alone: nothing in the services has to report them.

Every ``api.panel_refresh_s`` the API samples where the pipeline's topics end and how far each stage's consumers
have got. A stage's output rate is the growth of the ends of the topics it writes (ingest: trades, quotes, book;
worker: klines, indicators), its input rate the growth of its consumers' committed positions; lag is what a
consumer has not processed yet, per group, topic and partition. Rates are taken over the last few samples, so one
commit that lands just after a sample does not make the figure jump. Every figure counts records (on the hot
topics a record is a batch of events, ``bus/records.py``).

Where the figures come from is a :class:`Sampler`, picked by :func:`offset_monitor` from ``bus.kind``:

- Kafka (:class:`KafkaSampler`, here): the end offsets (last stable offsets: what a ``read_committed`` consumer
  can reach) of the watched topics and the committed offsets of the consumer groups; lag = end - committed. With
  transactional producers a commit marker takes an offset too.
- NATS JetStream (``offsets_nats.py``): the streams' last sequences and the consumers' progress.

Bounded: a fixed set of topics and groups, a few samples each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from market_ingestor.bus.topics import Topics
from market_ingestor.config import Config
from market_ingestor.errors import BusError

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
    """Stage -> its consumer group: on Kafka the worker is the Faust app itself, the sink and the API's ticker
    table run in groups of their own (on NATS the sink's group is a durable consumer per topic)."""
    app_id = config.streams.app_id
    return {"worker": app_id, "sink": f"{app_id}-sink", "api": f"{app_id}-api"}


class Throughput(msgspec.Struct, frozen=True):
    stage: str
    direction: Literal["in", "out"]
    topic: str
    per_s: float  # float-ok: a rate, records per second


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
    end: Mapping[TopicPart, int]  # where each watched topic partition ends (Kafka offset, NATS stream sequence)
    committed: Mapping[str, Mapping[TopicPart, int]]  # stage -> how far its consumers have got on watched topics
    lags: tuple[GroupLag, ...] = ()  # the lag rows as of this sample, computed by the sampler


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


class Sampler(Protocol):
    """Reads one :class:`Sample` from the bus, with clients opened once."""

    async def open(self) -> None:
        """Connects; raises if the bus cannot be reached (the monitor's caller starts it again later)."""

    async def close(self) -> None: ...

    async def sample(self) -> Sample:
        """Where the watched topics end and how far each stage has got now, with the lag rows; raises
        :class:`BusError` or ``TimeoutError`` when the bus does not answer (tried again at the next interval)."""


class OffsetMonitor:
    """Samples until cancelled (:meth:`run`); :meth:`throughput` and :meth:`lag` read the latest samples."""

    def __init__(self, sampler: Sampler, interval_s: float, window: int = 5) -> None:  # float-ok: seconds
        self.sampler = sampler
        self.interval_s = interval_s  # float-ok: seconds
        self.samples: deque[Sample] = deque(maxlen=window + 1)
        self.error: str | None = None

    def throughput(self) -> list[Throughput]:
        return throughput(self.samples[0], self.samples[-1]) if len(self.samples) > 1 else []

    def lag(self) -> list[GroupLag]:
        return list(self.samples[-1].lags) if self.samples else []

    async def run(self) -> None:
        """Samples every ``interval_s``; a failed sample is recorded in :attr:`error` and retried."""
        try:
            # A bus that cannot be reached here ends run(): the caller restarts it with new clients.
            await self.sampler.open()
            while True:
                try:
                    sample = await asyncio.wait_for(self.sampler.sample(), timeout=10 * self.interval_s)
                    self.samples.append(sample)
                    self.error = None
                except (BusError, TimeoutError) as exc:
                    reason = str(exc) or repr(exc)
                    self.error = f"offsets: {reason}"
                    log.warning("could not read offsets", extra={"reason": reason})
                await asyncio.sleep(self.interval_s)
        finally:
            await self.sampler.close()


def offset_monitor(config: Config, window: int = 5) -> OffsetMonitor:
    """The monitor of ``config.bus.kind``, sampling every ``api.panel_refresh_s``; constructing it does no I/O."""
    sampler: Sampler
    if config.bus.kind == "nats":
        from market_ingestor.api.offsets_nats import NatsSampler

        sampler = NatsSampler(config)
    else:
        sampler = KafkaSampler(config)
    return OffsetMonitor(sampler, config.api.panel_refresh_s, window)


class KafkaSampler:
    """End offsets of the watched topics and the committed offsets of :func:`consumer_groups`."""

    def __init__(self, config: Config) -> None:
        self.kafka = config.bus.kafka
        self.prefix = config.bus.topic_prefix
        self.groups = consumer_groups(config)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self) -> None:
        kafka = self.kafka
        self._admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id=f"{kafka.client_id}-panel")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            client_id=f"{kafka.client_id}-panel",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._admin.start()
        await self._consumer.start()

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def sample(self) -> Sample:
        if self._admin is None or self._consumer is None:
            raise BusError("the offsets sampler is not open")
        try:
            sample = await self._sample(self._admin, self._consumer)
        except KafkaError as exc:
            raise BusError(repr(exc)) from exc
        return dataclasses.replace(sample, lags=tuple(lag(sample, self.groups)))

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
