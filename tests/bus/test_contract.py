"""One contract, two transports: every test here runs against the real Kafka and the real NATS JetStream of
the dev stack, so callers can swap the bus by configuration alone."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest

from market_ingestor.bus import Bus, Delivery, Subscriber, TopicSpec, open_bus
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.errors import BusClosedError, BusError

pytestmark = [pytest.mark.kafka, pytest.mark.nats]

KEYS = [f"ex{n % 3}.SYM{n}" for n in range(8)]


@pytest.fixture(params=["kafka", "nats"])
def bus_config(request: pytest.FixtureRequest, dev_stack) -> BusConfig:  # type: ignore[no-untyped-def]
    return BusConfig(
        kind=request.param,
        # The broker's minimum session timeout: a killed consumer's partitions move after 6 s, not 10.
        kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=4, linger_ms=2, session_timeout_ms=6000),
        # A short ack wait so a redelivery test does not wait half a minute.
        nats=NatsConfig(url=dev_stack.nats_url, ack_wait_s=1.0, storage="memory"),
    )


@pytest.fixture
def bus(bus_config: BusConfig) -> Bus:
    return open_bus(bus_config)


@pytest.fixture
async def topic(bus: Bus) -> str:
    name = f"test.contract.{uuid.uuid4().hex[:12]}"
    await bus.ensure_topics([TopicSpec(name, retention_s=3600, partitions=4)])
    return name


async def publish_sequence(bus: Bus, topic: str, per_key: int) -> list[tuple[str, bytes]]:
    """Publishes ``per_key`` numbered records for every key, interleaved; returns them in publish order."""
    sent = []
    publisher = bus.publisher()
    await publisher.start()
    try:
        for n in range(per_key):
            for key in KEYS:
                value = f"{key}:{n}".encode()
                await publisher.publish(topic, key, value, msg_id=value.decode())
                sent.append((key, value))
    finally:
        await publisher.stop()
    return sent


async def drain(
    subscriber: Subscriber, expected: int, idle_timeout_s: float = 10.0, commit: bool = False
) -> list[Delivery]:
    """Fetches until ``expected`` records arrived, or until nothing arrives for ``idle_timeout_s``.

    Without ``commit`` a slow drain may see NATS redeliver what it has not acked yet (ack wait 1 s here)."""
    received: list[Delivery] = []
    while len(received) < expected:
        batch = await subscriber.fetch(max_records=500, timeout_s=idle_timeout_s)
        if not batch:
            break
        received.extend(batch)
        if commit:
            await subscriber.commit(batch)
    return received


@pytest.fixture
async def subscriber_factory(bus: Bus) -> AsyncIterator:  # type: ignore[type-arg]
    started: list[Subscriber] = []

    async def make(topics: Sequence[str], group: str) -> Subscriber:
        subscriber = bus.subscriber(topics, group)
        await subscriber.start()
        started.append(subscriber)
        return subscriber

    yield make
    for subscriber in started:
        await subscriber.stop()


async def test_every_published_record_is_consumed_with_key_and_value(bus, topic, subscriber_factory):
    sent = await publish_sequence(bus, topic, per_key=50)
    consumer = await subscriber_factory([topic], "g-all")
    received = await drain(consumer, len(sent))
    assert sorted((d.key, d.value) for d in received) == sorted(sent)
    assert all(d.topic == topic for d in received)


async def test_records_of_one_key_arrive_in_publish_order(bus, topic, subscriber_factory):
    await publish_sequence(bus, topic, per_key=200)
    consumer = await subscriber_factory([topic], "g-order")
    received = await drain(consumer, 200 * len(KEYS))
    numbers: dict[str, list[int]] = defaultdict(list)
    for delivery in received:
        numbers[delivery.key].append(int(delivery.value.split(b":")[1]))
    assert set(numbers) == set(KEYS)
    for key, seen in numbers.items():
        assert seen == list(range(200)), f"{key} out of order"


async def test_uncommitted_records_are_redelivered_after_a_consumer_dies(bus, topic, subscriber_factory):
    sent = await publish_sequence(bus, topic, per_key=25)
    first = await subscriber_factory([topic], "g-crash")
    received = await drain(first, len(sent))
    assert len(received) == len(sent)
    # Commit only what this consumer "processed" before it died: per partition, the first half.
    by_partition: dict[int, list[Delivery]] = defaultdict(list)
    for delivery in received:
        by_partition[delivery.partition].append(delivery)
    processed = [d for records in by_partition.values() for d in records[: len(records) // 2]]
    await first.commit(processed)
    await first.stop()  # dies without committing the rest

    second = await subscriber_factory([topic], "g-crash")
    expected = {(d.key, d.value) for d in received} - {(d.key, d.value) for d in processed}
    redelivered = await drain(second, len(expected))
    assert {(d.key, d.value) for d in redelivered} == expected


async def test_a_killed_consumer_process_leaves_its_uncommitted_records_to_the_group(
    bus, bus_config, topic, subscriber_factory
):
    """kill -9 of a consumer process: no clean leave, no last commit. The group gets the rest."""
    sent = await publish_sequence(bus, topic, per_key=25)
    script = Path(__file__).parent / "crashing_consumer.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        msgspec.json.encode(bus_config).decode(),
        topic,
        "g-kill",
        str(len(sent)),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        report = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
    finally:
        process.kill()
        await process.wait()
    assert len(report["received"]) == len(sent)
    expected = {tuple(p) for p in report["received"]} - {tuple(p) for p in report["committed"]}
    assert expected, "the crashing consumer must leave something uncommitted"

    survivor = await subscriber_factory([topic], "g-kill")
    redelivered = await drain(survivor, len(expected), idle_timeout_s=30.0)
    assert {(d.key, d.value.decode()) for d in redelivered} == expected


async def test_committed_records_are_not_delivered_again_to_the_same_group(bus, topic, subscriber_factory):
    sent = await publish_sequence(bus, topic, per_key=5)
    first = await subscriber_factory([topic], "g-commit")
    received = await drain(first, len(sent))
    await first.commit(received)
    await first.stop()
    second = await subscriber_factory([topic], "g-commit")
    assert await second.fetch(max_records=100, timeout_s=2.0) == []


async def test_a_second_group_reads_the_topic_from_the_beginning(bus, topic, subscriber_factory):
    sent = await publish_sequence(bus, topic, per_key=5)
    first = await subscriber_factory([topic], "g-one")
    await first.commit(await drain(first, len(sent)))
    other = await subscriber_factory([topic], "g-two")
    assert len(await drain(other, len(sent))) == len(sent)


async def test_a_resent_message_is_deduplicated_where_the_bus_can(bus, topic, subscriber_factory):
    publisher = bus.publisher()
    await publisher.start()
    for _ in range(3):  # the same event re-sent, e.g. by an ingestor retrying after a timeout
        await publisher.publish(topic, "ex.SYM", b"payload", msg_id="t.ex.SYM.42")
    await publisher.publish(topic, "ex.SYM", b"other", msg_id="t.ex.SYM.43")
    await publisher.stop()
    consumer = await subscriber_factory([topic], "g-dedupe")
    values = [d.value for d in await drain(consumer, 4, idle_timeout_s=3.0, commit=True)]
    if bus.deduplicates_resends:
        assert values == [b"payload", b"other"]
    else:
        # Kafka's idempotent producer dedupes its own retries only; consumers upsert by event identity.
        assert sorted(values) == [b"other", b"payload", b"payload", b"payload"]


async def test_publishing_before_start_is_a_clear_error(bus, topic):
    with pytest.raises(BusClosedError, match="not started"):
        await bus.publisher().publish(topic, "ex.SYM", b"x")


async def test_an_unreachable_broker_is_a_bus_error_naming_the_address():
    for config in (
        BusConfig(kind="kafka", kafka=KafkaConfig(bootstrap="127.0.0.1:1", request_timeout_ms=2000)),
        BusConfig(kind="nats", nats=NatsConfig(url="nats://127.0.0.1:1", connect_timeout_s=2.0)),
    ):
        publisher = open_bus(config).publisher()
        with pytest.raises(BusError, match=r"127\.0\.0\.1:1\b"):
            await publisher.start()


async def test_followers_each_read_everything_from_the_beginning_and_then_new_records(bus, topic, subscriber_factory):
    sent = await publish_sequence(bus, topic, per_key=3)
    first, second = bus.follower([topic]), bus.follower([topic])
    for follower in (first, second):
        await follower.start()
    try:
        for follower in (first, second):
            assert sorted((d.key, d.value) for d in await drain(follower, len(sent))) == sorted(sent)
        publisher = bus.publisher()
        await publisher.start()
        await publisher.publish(topic, "ex.NEW", b"later", msg_id="later")
        await publisher.stop()
        for follower in (first, second):
            assert [(d.key, d.value) for d in await drain(follower, 1)] == [("ex.NEW", b"later")]
    finally:
        await first.stop()
        await second.stop()


async def test_a_tail_follower_starts_n_records_before_the_end_and_then_follows(bus, topic):
    """tail=0: only what is published after start(); tail=n: the last n records (per partition on Kafka, of the
    stream on NATS; one key here, so one partition either way), then new ones."""
    publisher = bus.publisher()
    await publisher.start()
    try:
        for n in range(10):
            await publisher.publish(topic, "ex.ONE", f"old{n}".encode(), msg_id=f"old{n}")
        await publisher.flush()
        live, recent = bus.follower([topic], tail=0), bus.follower([topic], tail=3)
        for follower in (live, recent):
            await follower.start()
        try:
            await publisher.publish(topic, "ex.ONE", b"new", msg_id="new")
            await publisher.flush()
            assert [d.value for d in await drain(live, 1)] == [b"new"]
            assert [d.value for d in await drain(recent, 4)] == [b"old7", b"old8", b"old9", b"new"]
            for follower in (live, recent):
                assert await follower.fetch(max_records=10, timeout_s=0.5) == []
        finally:
            await live.stop()
            await recent.stop()
    finally:
        await publisher.stop()


async def test_a_tail_follower_of_a_missing_topic_is_a_bus_error(bus):
    follower = bus.follower([f"test.missing.{uuid.uuid4().hex[:12]}"], tail=0)
    with pytest.raises(BusError, match="missing"):
        await follower.start()
