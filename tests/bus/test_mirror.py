"""The flat mirror: pure flattening, and the ``mirror`` command against the real Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from decimal import Decimal

import pytest

from market_ingestor.bus import open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.mirror import flatten
from market_ingestor.bus.records import batch_value
from market_ingestor.bus.topics import Topics
from market_ingestor.config import BusConfig, KafkaConfig
from market_ingestor.model import Trade, encode


def trade(n: int, symbol: str) -> Trade:
    return Trade("okx", symbol, str(n), Decimal("27000.10"), Decimal("12.50"), "sell", n, n)


def test_flatten_keeps_each_events_text_and_keys_it_by_instrument() -> None:
    events = [trade(1, "BTCUSDT"), trade(2, "ETHUSDT")]
    value = batch_value(encode(event) for event in events)
    flat, bad = flatten(value)
    assert flat == [("okx.BTCUSDT", encode(events[0])), ("okx.ETHUSDT", encode(events[1]))]
    assert b'"price":"27000.10"' in flat[0][1]  # the text passes through: digits as they were
    assert bad == []


def test_flatten_names_what_is_not_an_event() -> None:
    flat, bad = flatten(b'[{"type":"trade","exchange":"okx","symbol":"A"},{"nope":1}]')
    assert [key for key, _ in flat] == ["okx.A"]
    assert bad[0][0] == b'{"nope":1}' and "not an event" in bad[0][1]
    assert flatten(b"garbage")[1][0][1].startswith("not JSON")


@pytest.mark.kafka
async def test_mirror_writes_one_keyed_record_per_event_and_stops_cleanly(dev_stack, tmp_path) -> None:
    prefix = f"m{uuid.uuid4().hex[:8]}."
    config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    bus = open_bus(config)
    trades = [trade(n, f"S{n % 5}") for n in range(300)]
    publisher = bus.publisher()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": dev_stack.kafka_bootstrap,
        "MARKET_INGESTOR__BUS__TOPIC_PREFIX": prefix,
        "MARKET_INGESTOR__BUS__KAFKA__PARTITIONS": "3",
        "MARKET_INGESTOR__STREAMS__APP_ID": prefix.rstrip("."),
        "MARKET_INGESTOR_CONFIG": str(tmp_path / "none.toml"),
    }
    (tmp_path / "none.toml").write_text("")
    mirror = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_ingestor.cli.main", "mirror", Topics.TRADES, env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        flat_topic = prefix + Topics.TRADES + ".flat"
        for _ in range(300):  # the command creates the topics; wait for it by the topic's existence
            if flat_topic in await _topics(bus):
                break
            assert mirror.returncode is None, "mirror exited early"
            await asyncio.sleep(0.1)
        await publisher.start()
        for item in trades:
            await publisher.publish(prefix + Topics.TRADES, bus_key(item), encode(item), event_id(item))
        await publisher.stop()
        follower = bus.follower([flat_topic])
        await follower.start()
        got = []
        while len(got) < len(trades):
            batch = await follower.fetch(max_records=1000, timeout_s=30)
            assert batch, f"only {len(got)} of {len(trades)} events were mirrored"
            got.extend(batch)
        await follower.stop()
        assert sorted((d.key, d.value) for d in got) == sorted((bus_key(t), encode(t)) for t in trades)
        per_key: dict[str, list[int]] = {}
        for delivery in sorted(got, key=lambda d: (d.partition, d.position)):
            per_key.setdefault(delivery.key, []).append(int(json.loads(delivery.value)["trade_id"]))
        assert all(ids == sorted(ids) for ids in per_key.values())
        mirror.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(mirror.communicate(), 30)
        assert mirror.returncode == 0, stderr.decode()[-2000:]
        assert b"mirror stopped after 300 events" in stderr
    finally:
        if mirror.returncode is None:
            mirror.kill()
            await mirror.wait()


async def _topics(bus) -> set[str]:  # type: ignore[no-untyped-def]
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bus.config.bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
