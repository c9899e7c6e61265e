"""Kafka/Redpanda transport on aiokafka.

The publisher fills one record batch per partition itself and hands whole batches to aiokafka: a per-message
``send()`` costs a future and a metadata check per record and tops out near 60k msgs/s on one core, while
batch submission moves several times that. Partitions are chosen with Kafka's own murmur2 key hashing, so
producers in other languages put the same key on the same partition. The producer is idempotent with
acks=all: its own retries never duplicate or reorder a batch.

A broker that is away does not cost events: the client retries the batch it holds for each partition, and the
next batch that it does not take within ``request_timeout_ms`` stays with the publisher, handed again with
:data:`BROKER_RETRY` (each retry logged and counted in ``kafka_publish_retries_total``) until the broker is back.
Meanwhile ``publish`` waits, which is the backpressure to the caller (ingest's bounded queue fills, its connectors
stop reading). Only ``stop()`` gives up: it waits ``request_timeout_ms`` for the broker, then logs and raises how
many events were not delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import Counter

from market_ingestor.bus.base import Delivery
from market_ingestor.bus.records import RecordBuilder, is_batched
from market_ingestor.bus.topics import PIPELINE_TOPICS, TopicSpec
from market_ingestor.config import BatchConfig, KafkaConfig
from market_ingestor.errors import BusClosedError, BusError, ConfigError
from market_ingestor.retry import Retries, RetryPolicy

log = logging.getLogger(__name__)

_PARTITION_CACHE_MAX = 100_000
_NEW_TOPIC_WAIT_S = 2.0  # float-ok: seconds
_METADATA_POLL_S = 0.1  # float-ok: seconds
LEADER_WAIT_S = 30.0  # float-ok: how long ensure_topics waits for the partition leaders of new topics

# A batch the broker did not take within request_timeout_ms is handed again after 0.5 s doubling to 5 s, for as
# long as the broker is away; only the publisher's stop() ends the wait.
BROKER_RETRY = RetryPolicy(0.5, 5.0)
PUBLISH_RETRIES = Counter(
    "kafka_publish_retries_total", "Batches the Kafka broker did not take in time, handed again", ["topic"]
)


def _compression(config: KafkaConfig) -> str | None:
    return None if config.compression == "none" else config.compression


def _delivery(record: ConsumerRecord[bytes, bytes]) -> Delivery:
    return Delivery(
        topic=record.topic,
        key=record.key.decode() if record.key is not None else "",
        value=record.value or b"",
        partition=record.partition,
        position=record.offset,
    )


async def _partitions(config: KafkaConfig, topic: str, wait_s: float = 0.0) -> list[TopicPartition]:  # float-ok
    """The topic's partitions, from the broker; none when the topic does not exist (asked without creating it,
    which a metadata request for the topic itself would do on a broker with auto.create.topics.enable). A topic
    created a moment ago can take a while to show in the metadata: up to ``wait_s`` is given for that."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap, client_id=config.client_id)
    try:
        await admin.start()
        deadline = time.monotonic() + wait_s
        while True:
            if topic in await admin.list_topics():
                (described,) = await admin.describe_topics([topic])
                if described["partitions"]:
                    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(_METADATA_POLL_S)
    finally:
        await admin.close()


async def _await_leaders(
    admin: AIOKafkaAdminClient, topics: list[str], wait_s: float = LEADER_WAIT_S
) -> None:  # float-ok
    """Returns once every partition of ``topics`` has a leader, or after ``wait_s`` (logged). A topic created a
    moment ago elects its leaders within moments; a producer that sends before gets NotLeaderForPartition and
    retries with a warning per batch."""
    deadline = time.monotonic() + wait_s
    while True:
        leaderless = sorted(
            {
                described["topic"]
                for described in await admin.describe_topics(topics)
                if described["error_code"] or any(p["error_code"] or p["leader"] < 0 for p in described["partitions"])
            }
        )
        if not leaderless:
            return
        if time.monotonic() >= deadline:
            log.warning("topics still without a leader for every partition", extra={"topics": leaderless})
            return
        await asyncio.sleep(_METADATA_POLL_S)


def _passing(exc: KafkaError) -> bool:
    """A failure that a broker coming back ends: not taken in time, no leader yet, no connection."""
    return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError)


async def _close(producer: AIOKafkaProducer) -> None:
    """Closes a client without waiting for a broker that is away: its own stop() would wait for the batches it
    still holds, which it retries for ever (the caller has counted those events as lost)."""
    from market_ingestor.bus.faust.internals import close_producer_now

    await close_producer_now(producer, BusClosedError("Kafka publisher stopped"))


class KafkaBus:
    # The idempotent producer dedupes its own retries; an application re-send is a new record.
    deduplicates_resends = False

    def __init__(self, config: KafkaConfig, batch: BatchConfig | None = None) -> None:
        self.config = config
        self.batch = batch or BatchConfig()

    async def ensure_topics(self, topics: Sequence[TopicSpec] = PIPELINE_TOPICS) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap, client_id=self.config.client_id)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [self._new_topic(spec) for spec in topics if spec.name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                    log.info("created topics", extra={"topics": [topic.name for topic in missing]})
                except TopicAlreadyExistsError:
                    pass  # another process created them between our list and create
            await _await_leaders(admin, [spec.name for spec in topics])
        except KafkaError as exc:
            raise BusError(f"cannot create Kafka topics on {self.config.bootstrap}: {exc!r}") from exc
        finally:
            await admin.close()

    def _new_topic(self, spec: TopicSpec) -> NewTopic:
        configs = {"retention.ms": str(spec.retention_s * 1000)}
        if spec.compacted:
            configs = {"cleanup.policy": "compact"}
        return NewTopic(
            name=spec.name,
            num_partitions=spec.partitions or self.config.partitions,
            replication_factor=self.config.replication_factor,
            topic_configs=configs,
        )

    async def read_topic(self, topic: str) -> list[Delivery]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap,
            client_id=self.config.client_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        try:
            partitions = await _partitions(self.config, topic)
            if not partitions:
                return []
            await consumer.start()
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            records: list[Delivery] = []
            # Read until every partition's position reaches the end offset taken at the start.
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                batches = await consumer.getmany(timeout_ms=1000)
                records.extend(_delivery(record) for batch in batches.values() for record in batch)
            return sorted(records, key=lambda d: (d.partition, d.position))
        except KafkaError as exc:
            raise BusError(f"cannot read Kafka topic {topic!r}: {exc!r}") from exc
        finally:
            await consumer.stop()

    def publisher(self) -> KafkaPublisher:
        return KafkaPublisher(self.config, self.batch)

    def subscriber(self, topics: Sequence[str], group: str) -> KafkaSubscriber:
        return KafkaSubscriber(self.config, topics, group)

    def follower(self, topics: Sequence[str], *, tail: int | None = None) -> KafkaSubscriber:
        return KafkaSubscriber(self.config, topics, None, tail=tail)


@dataclass(slots=True, eq=False)
class _Batch:
    """A Kafka record batch of one partition and the count of events in its records."""

    builder: Any  # aiokafka's BatchBuilder
    events: int = 0


class KafkaPublisher:
    """Batch records (``bus/records.py``) on the hot topics, one record per event elsewhere, in Kafka record
    batches per partition submitted whole.

    All filling is synchronous: a closed record goes into its partition's open record batch, a full record batch
    joins the partition's ready queue, and only submitting the ready queue awaits (in queue order, under the
    partition's lock), which is where the publisher waits while the broker is behind (or away)."""

    def __init__(self, config: KafkaConfig, batch: BatchConfig | None = None) -> None:
        self.config = config
        self.batch = batch or BatchConfig()
        self._producer: AIOKafkaProducer | None = None
        self._records: dict[tuple[str, int], RecordBuilder] = {}  # open batch records of the batched topics
        self._batched: dict[str, bool] = {}  # is_batched per topic, looked up once
        self._open_batches: dict[tuple[str, int], _Batch] = {}  # open Kafka record batches
        self._ready: dict[tuple[str, int], deque[_Batch]] = defaultdict(deque)  # full record batches, in order
        self._submit_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._in_flight: set[asyncio.Future[object]] = set()
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, str], int] = {}
        self._failure: BaseException | None = None
        self._linger_task: asyncio.Task[None] | None = None
        self._published = 0  # events given to publish()
        self._delivered = 0  # events in batches the broker acknowledged
        self._give_up_at: float | None = None  # float-ok: monotonic time; set by stop()

    async def start(self) -> None:
        config = self.config
        if self.batch.max_bytes > config.max_request_size_bytes // 2:
            raise ConfigError(
                f"bus.batch.max_bytes ({self.batch.max_bytes}) must be at most half of "
                f"bus.kafka.max_request_size_bytes ({config.max_request_size_bytes})"
            )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap,
            client_id=config.client_id,
            acks=-1 if config.acks == "all" else 1,
            enable_idempotence=config.acks == "all",
            linger_ms=config.linger_ms,
            max_batch_size=max(config.batch_size_bytes, self.batch.max_bytes + 4096),
            max_request_size=config.max_request_size_bytes,
            compression_type=_compression(config),
            request_timeout_ms=config.request_timeout_ms,
        )
        # aiokafka fails a batch still unsent request_timeout_ms after it took it, when the partition has no
        # leader at that moment (a broker just restarted): a batch that may have been written before, which a
        # resend would duplicate. Its batches never expire here instead: the idempotent client retries them until
        # the broker has them (no loss, no duplicate, the partition's order kept), and only stop() gives up.
        # (Imported here: the boundary module imports Faust, which ingest otherwise never loads.)
        from market_ingestor.bus.faust.internals import never_expire_batches

        never_expire_batches(self._producer)
        try:
            await self._producer.start()
        except KafkaError as exc:
            self._producer = None
            raise BusError(f"cannot connect to Kafka at {config.bootstrap}: {exc!r}") from exc
        self._linger_task = asyncio.create_task(self._linger(), name="kafka-publisher-linger")

    async def stop(self) -> None:
        """Flushes, waiting up to ``request_timeout_ms`` for a broker that is away; what it has not taken by then
        is lost: logged as an error with the count, and raised (BusError)."""
        if self._producer is None:
            return
        self._give_up_at = time.monotonic() + self.config.request_timeout_ms / 1000
        if self._linger_task is not None:  # first: it could be waiting for the broker, holding a partition's lock
            self._linger_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._linger_task
            self._linger_task = None
        try:
            await self.flush()
        finally:
            if self.undelivered():
                log.error(
                    "Kafka publisher stopped with events the broker has not acknowledged: lost",
                    extra={"undelivered": self.undelivered(), "bootstrap": self.config.bootstrap},
                )
            producer, self._producer = self._producer, None
            if producer is not None:
                await _close(producer)

    def undelivered(self) -> int:
        """Events given to ``publish`` that the broker has not acknowledged (yet)."""
        return self._published - self._delivered

    async def publish(self, topic: str, key: str, value: bytes, msg_id: str | None = None) -> None:
        self._live_producer()
        self._published += 1
        partition = self._partition_of.get((topic, key))
        if partition is None:
            partition = await self._partition(topic, key)
        slot = (topic, partition)
        batched = self._batched.get(topic)
        if batched is None:
            batched = self._batched[topic] = is_batched(topic)
        if batched:
            record = self._records.get(slot)
            if record is None:
                record = self._records[slot] = self._new_record()
            elif not record.fits(value):
                self._close_record(slot)
                record = self._records[slot] = self._new_record()
            record.add(key, value)
        else:
            self._append(slot, key.encode(), value)
        if self._ready[slot]:
            await self._submit(slot)

    async def flush(self) -> None:
        await self._submit_all()
        while self._in_flight:
            remaining_s = None if self._give_up_at is None else self._give_up_at - time.monotonic()
            if remaining_s is not None and remaining_s <= 0:
                raise BusError(f"the Kafka broker did not acknowledge {self.undelivered()} events before stop")
            await asyncio.wait(list(self._in_flight), timeout=remaining_s)
        self._raise_failure()

    def _live_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BusClosedError("Kafka publisher is not started")
        self._raise_failure()
        return self._producer

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise BusError(f"Kafka rejected a batch: {self._failure!r}") from self._failure

    async def _partition(self, topic: str, key: str) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            try:
                found = await self._live_producer().partitions_for(topic)
            except KafkaError as exc:
                raise BusError(f"no metadata for Kafka topic {topic!r}: {exc!r}") from exc
            partitions = self._partitions[topic] = sorted(found)
        # The same murmur2 hash as Kafka's Java client, so every producer agrees on a key's partition.
        partition = partitions[(murmur2(key.encode()) & 0x7FFFFFFF) % len(partitions)]
        if len(self._partition_of) >= _PARTITION_CACHE_MAX:
            self._partition_of.clear()
        self._partition_of[(topic, key)] = partition
        return partition

    def _new_record(self) -> RecordBuilder:
        return RecordBuilder(self.batch.max_events, self.batch.max_bytes, time.monotonic())

    def _close_record(self, slot: tuple[str, int]) -> None:
        record = self._records.pop(slot, None)
        if record is not None and record.key is not None:
            self._append(slot, record.key.encode(), record.value(), len(record))

    def _append(self, slot: tuple[str, int], key: bytes, value: bytes, events: int = 1) -> None:
        batch = self._open_batches.get(slot)
        if batch is None:
            batch = self._open_batches[slot] = _Batch(self._live_producer().create_batch())
        if batch.builder.append(timestamp=None, key=key, value=value) is None:
            self._ready[slot].append(self._open_batches.pop(slot))
            batch = self._open_batches[slot] = _Batch(self._live_producer().create_batch())
            if batch.builder.append(timestamp=None, key=key, value=value) is None:
                raise BusError(f"a record of {len(value)} bytes does not fit a Kafka batch for {slot[0]}")
        batch.events += events

    async def _submit_all(self, opened_before_s: float | None = None) -> None:
        """Closes the open records (those started before ``opened_before_s`` only, when given) and submits
        every record batch."""
        for slot, record in list(self._records.items()):
            if opened_before_s is None or record.opened_s <= opened_before_s:
                self._close_record(slot)
        for slot in list(self._open_batches):
            batch = self._open_batches.pop(slot)
            if batch.builder.record_count():
                self._ready[slot].append(batch)
        for slot in list(self._ready):
            await self._submit(slot)

    async def _submit(self, slot: tuple[str, int]) -> None:
        # One lock per partition keeps batches of a partition in the order they were filled.
        lock = self._submit_locks.setdefault(slot, asyncio.Lock())
        async with lock:
            ready = self._ready[slot]
            retries: Retries | None = None
            while ready:
                batch = ready[0]
                producer = self._live_producer()
                try:
                    # Waits while the previous batch of this partition is undrained: the backpressure point.
                    future = await producer.send_batch(batch.builder, slot[0], partition=slot[1])
                except KafkaError as exc:
                    if not _passing(exc):
                        raise BusError(f"cannot queue a batch for {slot[0]}[{slot[1]}]: {exc!r}") from exc
                    # Not taken (the client still holds this partition's previous batch, for a broker that is
                    # away): the batch is still ours, first in the queue, and is handed again.
                    retries = retries or BROKER_RETRY.retries(f"Kafka batch for {slot[0]}[{slot[1]}]")
                    await self._wait_for_broker(slot[0], exc, retries)
                    continue
                ready.popleft()
                self._in_flight.add(future)
                future.add_done_callback(functools.partial(self._batch_done, batch.events))

    def _batch_done(self, events: int, future: asyncio.Future[object]) -> None:
        self._in_flight.discard(future)
        if future.cancelled():
            return
        if future.exception() is None:
            self._delivered += events
        elif self._failure is None:
            self._failure = future.exception()

    async def _wait_for_broker(self, topic: str, exc: KafkaError, retries: Retries) -> None:
        delay_s = retries.next_delay_s()
        if self._give_up_at is not None:
            delay_s = min(delay_s, self._give_up_at - time.monotonic())
            if delay_s <= 0:
                raise BusError(
                    f"the Kafka broker did not take {self.undelivered()} events before stop: {exc!r}"
                ) from exc
        PUBLISH_RETRIES.labels(topic).inc()
        log.warning(
            "the Kafka broker did not take a batch; retrying",
            extra={"topic": topic, "error": repr(exc), "retry": retries.attempt, "retry_in_s": round(delay_s, 3)},
        )
        await asyncio.sleep(delay_s)

    async def _linger(self) -> None:
        interval_s = max(self.batch.linger_ms, 1) / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                # A record goes out once its first event has waited linger_ms: between one and two lingers.
                await self._submit_all(opened_before_s=time.monotonic() - interval_s)
            except BusError as exc:
                self._failure = self._failure or exc


class KafkaSubscriber:
    def __init__(
        self, config: KafkaConfig, topics: Sequence[str], group: str | None, *, tail: int | None = None
    ) -> None:
        self.config = config
        self.topics = tuple(topics)
        self.group = group
        self.tail = tail
        self._consumer: AIOKafkaConsumer | None = None
        self._committed: dict[TopicPartition, int] = {}  # what this member committed, per partition

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *(self.topics if self.tail is None else ()),
            bootstrap_servers=self.config.bootstrap,
            client_id=self.config.client_id,
            group_id=self.group,
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=max(self.config.session_timeout_ms // 5, 100),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Never hand out records of aborted or open transactions (exactly-once producers upstream).
            isolation_level="read_committed",
        )
        try:
            await self._consumer.start()
            if self.tail is not None:
                await self._seek_tail(self._consumer, self.tail)
        except KafkaError as exc:
            await self.stop()
            raise BusError(f"cannot connect to Kafka at {self.config.bootstrap}: {exc!r}") from exc
        except BusError:
            await self.stop()
            raise

    async def _seek_tail(self, consumer: AIOKafkaConsumer, tail: int) -> None:
        # Offsets are fixed here, before start() returns, so nothing published afterwards can be missed (a
        # subscription with auto_offset_reset="latest" would settle its position lazily, at the first fetch).
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            found = await _partitions(self.config, topic, wait_s=_NEW_TOPIC_WAIT_S)
            if not found:
                raise BusError(f"Kafka topic {topic!r} does not exist on {self.config.bootstrap}: create it first")
            partitions.extend(found)
        first = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, max(first[tp], end[tp] - tail))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise BusClosedError("Kafka subscriber is not started")
        return self._consumer

    async def fetch(self, max_records: int = 1000, timeout_s: float = 1.0) -> list[Delivery]:
        try:
            batches = await self._live().getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise BusError(f"Kafka fetch failed: {exc!r}") from exc
        return [_delivery(record) for records in batches.values() for record in records]

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Commits ``position + 1`` of the last delivery per partition. Partitions no longer assigned (they moved
        to another member in a rebalance) and offsets not above this member's last commit are left out: the new
        owner reads those records again (at-least-once), and a commit never goes backwards."""
        if self.group is None:
            return  # a follower keeps no position on the server
        consumer = self._live()
        assigned = consumer.assignment()
        offsets: dict[TopicPartition, int] = {}
        for delivery in deliveries:
            tp = TopicPartition(delivery.topic, delivery.partition)
            offsets[tp] = max(offsets.get(tp, -1), delivery.position + 1)
        offsets = {
            tp: offset for tp, offset in offsets.items() if tp in assigned and offset > self._committed.get(tp, 0)
        }
        if not offsets:
            return
        try:
            await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member during a rebalance: it will get these records again,
            # which is the at-least-once contract; nothing is lost.
            log.warning("commit skipped after rebalance", extra={"group": self.group, "error": repr(exc)})
            return
        except KafkaError as exc:
            raise BusError(f"Kafka commit failed for group {self.group!r}: {exc!r}") from exc
        self._committed.update(offsets)

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records after this consumer's position in each partition assigned to it now: the end offset (the last
        stable offset, as the consumer reads ``read_committed``) minus the position."""
        consumer = self._live()
        assigned = sorted(consumer.assignment())
        if not assigned:
            return {}
        try:
            end = await consumer.end_offsets(assigned)
            positions = {tp: await consumer.position(tp) for tp in assigned}
        except KafkaError as exc:  # e.g. a rebalance took a partition meanwhile
            raise BusError(f"cannot read the lag of {self.topics}: {exc!r}") from exc
        return {(tp.topic, tp.partition): max(0, end[tp] - positions[tp]) for tp in assigned if tp in end}
