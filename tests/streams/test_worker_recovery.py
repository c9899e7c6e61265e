"""The worker's tables on the real Kafka of the dev stack: a second worker joining mid-stream takes over partitions
whose state comes from the changelogs (with a standby replica), and a worker restarted on intact local RocksDB
data does not need the changelog at all."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition
from worker_harness import (
    KlineWatcher,
    assert_same_klines,
    expected_klines,
    make_trades,
    publish,
    start_worker,
    stop_worker,
    until_or_fail,
    worker_config,
)

from market_ingestor.config import BusConfig, KafkaConfig

pytestmark = pytest.mark.kafka


async def group_members(admin: AIOKafkaAdminClient, group: str) -> int:
    described = await admin.describe_consumer_groups([group])
    return len(described[0].members) if described else 0


async def test_a_second_worker_takes_over_partitions_and_the_klines_stay_identical(dev_stack, tmp_path):
    prefix = f"s{uuid.uuid4().hex[:8]}."
    app_id = prefix.rstrip(".")
    bus_config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    trades = make_trades(6000, seed=5)
    expected = expected_klines(trades)
    config_path = worker_config(tmp_path, dev_stack.kafka_bootstrap, prefix, "at_least_once", standby_replicas=1)
    watcher = KlineWatcher(bus_config)
    admin = AIOKafkaAdminClient(bootstrap_servers=dev_stack.kafka_bootstrap)
    await admin.start()
    await watcher.follower.start()
    first = second = None
    try:
        await publish(bus_config, trades[:3000])
        first = await start_worker(config_path, tmp_path / "first")
        minutes = sorted((k for k in expected if k[1] == "1m"), key=lambda k: (k[2], k[0]))
        await until_or_fail(watcher, set(minutes[:6]), first)  # the first worker is mid-stream with state
        second = await start_worker(config_path, tmp_path / "second")

        async def both_members() -> None:
            while await group_members(admin, app_id) < 2:  # noqa: ASYNC110 - the broker offers no event to await
                await asyncio.sleep(0.2)

        await asyncio.wait_for(both_members(), 90)  # the group rebalanced: partitions are split between them
        await publish(bus_config, trades[3000:])
        await until_or_fail(watcher, set(expected), second)
        assert first.returncode is None, "the first worker died"
        await stop_worker(second)
        await stop_worker(first)
    finally:
        for worker in (first, second):
            if worker is not None and worker.returncode is None:
                worker.kill()
        await watcher.follower.stop()
        await admin.close()
    assert_same_klines(watcher.closed, expected)
    # The second worker holds table partitions (active or standby) in its own RocksDB.
    assert any((tmp_path / "second").rglob("*kline-state*")), "the second worker has no table data"


async def test_a_restart_on_intact_local_data_does_not_replay_the_changelog(dev_stack, tmp_path):
    """Between a clean stop and the restart every record of the table's changelog is deleted: a worker that
    rebuilt its state from the changelog would start empty and the windows open across the restart would lose
    the trades before it."""
    prefix = f"r{uuid.uuid4().hex[:8]}."
    app_id = prefix.rstrip(".")
    bus_config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    trades = make_trades(6000, seed=7)
    expected = expected_klines(trades)
    config_path = worker_config(tmp_path, dev_stack.kafka_bootstrap, prefix, "at_least_once")
    watcher = KlineWatcher(bus_config)
    admin = AIOKafkaAdminClient(bootstrap_servers=dev_stack.kafka_bootstrap)
    await admin.start()
    await watcher.follower.start()
    try:
        # Up to just past the 10th minute: the 5m window of minutes 10-15 is open at the stop.
        await publish(bus_config, trades[:3050])
        worker = await start_worker(config_path, tmp_path / "data")
        minutes = sorted((k for k in expected if k[1] == "1m"), key=lambda k: (k[2], k[0]))
        await until_or_fail(watcher, set(minutes[:27]), worker)  # every 1m window of the first 9 minutes
        await stop_worker(worker)
        changelog = f"{app_id}-kline-state-changelog"
        ends = await end_offsets(dev_stack.kafka_bootstrap, changelog)
        assert sum(ends.values()) > 0, "the worker wrote no changelog"
        await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()})
        await publish(bus_config, trades[3050:])
        worker = await start_worker(config_path, tmp_path / "data")
        await until_or_fail(watcher, set(expected), worker)
        await stop_worker(worker)
    finally:
        await watcher.follower.stop()
        await admin.close()
    assert_same_klines(watcher.closed, expected)


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()  # a topic created by another client just now
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
