"""The control panel's throughput and lag on NATS JetStream (the Kafka side and the shared shapes are in
``offsets.py``).

A NATS message is one record, as a Kafka record is (on the hot topics a batch of events), so the figures count
the same thing on both buses:

- a stage's output rate is the growth of the last sequence of the streams it writes (a re-send that JetStream
  drops as a duplicate takes no sequence);
- its input rate and its lag come from lag sources, each telling how far one consumer of the pipeline has got in
  each watched topic (:class:`Progress`). :class:`DurableConsumers` reads the bus adapter's group consumers
  (``bus/nats.py``: one durable pull consumer per group and topic, named ``durable_name(group, topic)``) from
  JetStream's consumer info: committed = the ack floor (the stream sequence up to which every message is
  acknowledged), lag = ``num_pending`` (not delivered yet) + ``num_ack_pending`` (delivered, not acknowledged). On
  NATS that is the sink's group; the API's own followers are ephemeral, per instance, and not shown.
  :class:`WorkerCheckpoints` reads the NATS stream worker, which has no durable consumer: each of its stages reads
  a whole stream and checkpoints, per shard, the sequence it goes on from, in a key-value bucket
  (``streams/nats_state.py``). Its progress in a topic is the oldest of those checkpoints: committed = the
  sequence before it (so its growth counts the records all workers have read past), lag = the messages after it
  (an upper bound: a shard further on has read some of them). The checkpoints are read after the stream ends of
  the same sample, so the two agree (``streams.nats_state.worker_backlog`` reads the end on its own).

A stage whose consumers are of yet another kind adds a :class:`LagSource` of its own to :func:`lag_sources`;
nothing else changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from market_ingestor.api.offsets import WATCHED_TOPICS, GroupLag, PartitionLag, Sample, TopicPart, consumer_groups
from market_ingestor.bus.nats import connect_client, durable_name, stream_name
from market_ingestor.bus.topics import Topics
from market_ingestor.config import Config
from market_ingestor.errors import BusError
from market_ingestor.streams.nats_state import bucket_name, read_bucket


@dataclass(frozen=True, slots=True)
class Progress:
    """How far one consumer has got in one watched topic (partition 0 on NATS, or a shard of the consumer's own)."""

    stage: str
    group: str
    topic: str  # logical (without the topic prefix)
    partition: int
    # Processed up to here; its growth between samples is the input rate, so it must grow by one per record (a
    # stream sequence for a consumer of the whole stream; a count of its own for a consumer of part of it).
    committed: int
    lag: int  # records not processed yet


class LagSource(Protocol):
    """The progress of one stage's consumers, read from JetStream."""

    async def progress(self, js: JetStreamContext, ends: Mapping[str, int]) -> list[Progress]:
        """Its consumers' progress in the watched topics that exist (``ends``: logical topic -> its stream's last
        sequence); a consumer that does not exist (yet) is left out. May raise ``nats.errors.Error``."""


class DurableConsumers:
    """The bus adapter's group consumers of ``group``: one durable pull consumer per topic (``bus/nats.py``)."""

    def __init__(self, stage: str, group: str, topic_prefix: str) -> None:
        self.stage, self.group, self.prefix = stage, group, topic_prefix

    async def progress(self, js: JetStreamContext, ends: Mapping[str, int]) -> list[Progress]:
        found = []
        for topic in ends:
            physical = self.prefix + topic
            try:
                info = await js.consumer_info(stream_name(physical), durable_name(self.group, physical))
            except NotFoundError:
                continue  # this group does not read this topic
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            behind = (info.num_pending or 0) + (info.num_ack_pending or 0)
            found.append(Progress(self.stage, self.group, topic, 0, floor, behind))
        return found


class WorkerCheckpoints:
    """The NATS stream worker of ``app_id``: its kline stage reads trades, its indicator stage klines; its
    checkpoints are ``{stage}.{shard}`` = the stream sequence the shard goes on from, in the bucket
    ``{app_id}_progress`` (``streams/nats_state.py``)."""

    STAGES = {"klines": Topics.TRADES, "indicators": Topics.KLINES}  # worker stage -> the topic it reads

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id

    async def progress(self, js: JetStreamContext, ends: Mapping[str, int]) -> list[Progress]:
        try:
            entries = await read_bucket(js, bucket_name(self.app_id, "progress"))
        except BusError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return []  # no NATS worker of this app has run
            raise
        oldest: dict[str, int] = {}
        for key, entry in entries.items():
            stage = key.rpartition(".")[0]
            oldest[stage] = min(int(entry.value), oldest.get(stage, int(entry.value)))
        found = []
        for stage, topic in self.STAGES.items():
            if stage in oldest and topic in ends:
                # Read after ends: a checkpoint past the end read then is counted as at the end.
                committed = min(oldest[stage] - 1, ends[topic])
                found.append(Progress("worker", self.app_id, topic, 0, committed, ends[topic] - committed))
        return found


def lag_sources(config: Config) -> list[LagSource]:
    """Every consumer of the pipeline the panel shows on NATS."""
    groups, prefix = consumer_groups(config), config.bus.topic_prefix
    return [DurableConsumers("sink", groups["sink"], prefix), WorkerCheckpoints(groups["worker"])]


def sample_of(at_s: float, ends: Mapping[str, int], progress: Sequence[Progress]) -> Sample:  # float-ok: monotonic
    """A :class:`Sample` from the streams' last sequences and the consumers' progress (pure)."""
    committed: dict[str, dict[TopicPart, int]] = {}
    rows: dict[tuple[str, str, str], list[PartitionLag]] = {}
    for p in progress:
        committed.setdefault(p.stage, {})[(p.topic, p.partition)] = p.committed
        end = ends.get(p.topic, 0)
        rows.setdefault((p.stage, p.group, p.topic), []).append(PartitionLag(p.partition, end, p.committed, p.lag))
    lags = tuple(
        GroupLag(stage, group, topic, sum(part.lag for part in parts), sorted(parts, key=lambda part: part.partition))
        for (stage, group, topic), parts in sorted(rows.items())
    )
    return Sample(at_s, {(topic, 0): last for topic, last in ends.items()}, committed, lags)


class NatsSampler:
    """Stream info of the watched topics and the progress of :func:`lag_sources`, on one connection."""

    def __init__(self, config: Config, sources: Sequence[LagSource] | None = None) -> None:
        self.nats = config.bus.nats
        self.prefix = config.bus.topic_prefix
        self.sources = list(sources) if sources is not None else lag_sources(config)
        self._client: NatsClient | None = None

    async def open(self) -> None:
        self._client = await connect_client(self.nats)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def sample(self) -> Sample:
        if self._client is None:
            raise BusError("the offsets sampler is not open")
        js = self._client.jetstream()
        try:
            ends: dict[str, int] = {}
            for topic in WATCHED_TOPICS:
                try:
                    ends[topic] = (await js.stream_info(stream_name(self.prefix + topic))).state.last_seq
                except NotFoundError:
                    continue  # not created yet
            progress = [found for source in self.sources for found in await source.progress(js, ends)]
        except NatsError as exc:
            raise BusError(f"cannot read JetStream stream and consumer info: {exc!r}") from exc
        return sample_of(time.monotonic(), ends, progress)
