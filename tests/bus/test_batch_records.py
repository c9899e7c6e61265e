"""Batch records on both real buses: every event once, in order per key, each record of one partition (Kafka) or
one subject (NATS), within the configured bounds; NATS stores a re-sent batch once."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict

import pytest
from aiokafka.partitioner import murmur2

from market_ingestor.bus import Bus, Delivery, Subscriber, TopicSpec, open_bus
from market_ingestor.bus.records import batch_value
from market_ingestor.config import BatchConfig, BusConfig, KafkaConfig, NatsConfig

pytestmark = [pytest.mark.kafka, pytest.mark.nats]

KEYS = [f"ex{n % 3}.SYM{n}" for n in range(8)]
PARTITIONS = 4


@pytest.fixture(params=["kafka", "nats"])
def bus(request: pytest.FixtureRequest, dev_stack) -> Bus:  # type: ignore[no-untyped-def]
    return open_bus(
        BusConfig(
            kind=request.param,
            kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=PARTITIONS),
            nats=NatsConfig(url=dev_stack.nats_url, ack_wait_s=5.0, storage="memory"),
            batch=BatchConfig(max_events=7, max_bytes=2048, linger_ms=2),
        )
    )


@pytest.fixture
async def topic(bus: Bus) -> str:
    # A prefixed hot topic: its records are batches.
    name = f"t{uuid.uuid4().hex[:10]}.market.trades"
    await bus.ensure_topics([TopicSpec(name, retention_s=3600, partitions=PARTITIONS)])
    return name


def event(key: str, n: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "test", "key": key, "n": n, "pad": "x" * pad}, separators=(",", ":")).encode()


async def drain(subscriber: Subscriber, events: int) -> list[Delivery]:
    records: list[Delivery] = []
    seen = 0
    while seen < events:
        batch = await subscriber.fetch(max_records=500, timeout_s=10.0)
        assert batch, f"only {seen} of {events} events arrived"
        records.extend(batch)
        seen += sum(len(json.loads(record.value)) for record in batch)
        await subscriber.commit(batch)
    return records


async def test_events_arrive_once_in_order_in_bounded_records_of_one_partition(bus: Bus, topic: str) -> None:
    publisher = bus.publisher()
    await publisher.start()
    sent = 0
    try:
        for n in range(60):
            for index, key in enumerate(KEYS):
                pad = 900 if (n + index) % 13 == 0 else 0  # some large events, to hit the byte bound too
                await publisher.publish(topic, key, event(key, n, pad), msg_id=f"{key}.{n}")
                sent += 1
    finally:
        await publisher.stop()
    subscriber = bus.subscriber([topic], f"g{uuid.uuid4().hex[:8]}")
    await subscriber.start()
    try:
        records = await drain(subscriber, sent)
    finally:
        await subscriber.stop()
    numbers: dict[str, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.position)):
        events = json.loads(record.value)
        assert isinstance(events, list) and 1 <= len(events) <= 7
        assert len(record.value) <= 2048
        assert record.key == events[0]["key"]
        for item in events:
            numbers[item["key"]].append(item["n"])
            if bus.deduplicates_resends:  # NATS: one subject, one instrument per message
                assert item["key"] == record.key
            else:  # Kafka: every event of a record hashes to the record's partition
                assert (murmur2(item["key"].encode()) & 0x7FFFFFFF) % PARTITIONS == record.partition
    assert numbers == {key: list(range(60)) for key in KEYS}
    assert len(records) < sent / 3, "events were not batched"


async def test_non_batched_topics_keep_one_event_per_record(bus: Bus) -> None:
    name = f"t{uuid.uuid4().hex[:10]}.market.control"
    await bus.ensure_topics([TopicSpec(name, compacted=True, partitions=1)])
    publisher = bus.publisher()
    await publisher.start()
    try:
        for n in range(5):
            await publisher.publish(name, "symbol.binance.BTCUSDT", event("k", n), msg_id=f"c{n}")
    finally:
        await publisher.stop()
    records = await bus.read_topic(name)
    values = [json.loads(record.value) for record in records]
    assert all(isinstance(value, dict) for value in values), values
    # NATS keeps one message per subject of a compacted topic; Kafka compacts later, in the background.
    assert [value["n"] for value in values] == ([4] if bus.deduplicates_resends else [0, 1, 2, 3, 4])


@pytest.mark.nats
async def test_nats_stores_a_resent_batch_once(bus: Bus, topic: str) -> None:
    if not bus.deduplicates_resends:
        pytest.skip("Kafka has no application-level deduplication; its idempotent producer covers retries")
    publisher = bus.publisher()
    await publisher.start()
    try:
        for _ in range(2):  # the same events twice: the same batch identity
            for n in range(5):
                await publisher.publish(topic, KEYS[0], event(KEYS[0], n), msg_id=f"{KEYS[0]}.{n}")
            await publisher.flush()
    finally:
        await publisher.stop()
    subscriber = bus.subscriber([topic], f"g{uuid.uuid4().hex[:8]}")
    await subscriber.start()
    try:
        records = await drain(subscriber, 5)
        assert await subscriber.fetch(max_records=10, timeout_s=0.5) == []
    finally:
        await subscriber.stop()
    assert [record.value for record in records] == [batch_value(event(KEYS[0], n) for n in range(5))]
