"""The NATS publisher's windowed acks survive a server crash: nothing lost, nothing stored twice; a group
subscriber waits out a server outage (stopped and started again) instead of failing.

Runs its own real nats-server (not the shared dev stack's) because the tests kill and stop it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from market_ingestor.bus import Publisher, TopicSpec, open_bus
from market_ingestor.bus.nats import PUBLISH_RETRIES
from market_ingestor.config import BusConfig, NatsConfig
from market_ingestor.errors import BusError
from nats_helpers import NatsProcess, free_port

pytestmark = pytest.mark.nats


@pytest.fixture
def nats_process(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "store", free_port())
    server.start()
    yield server
    if server.running():
        server.kill()


async def test_a_server_crash_mid_stream_loses_and_duplicates_nothing(nats_process: NatsProcess):
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_every=256, ack_timeout_s=5.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.crash"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    total = 20_000
    for n in range(total):
        if n == 12_000:
            # Crash without warning; whatever sat in socket buffers is gone. Restart on the same store.
            nats_process.kill()
            await asyncio.to_thread(nats_process.start)
        await publisher.publish(topic, f"ex.S{n % 7}", str(n).encode(), msg_id=f"id-{n}")
    await publisher.stop()

    stored = await bus.read_topic(topic)
    values = [int(d.value) for d in stored]
    assert len(values) == total, f"{total - len(set(values))} lost, {len(values) - len(set(values))} duplicated"
    assert set(values) == set(range(total))


async def test_a_group_subscriber_waits_out_a_server_outage_and_then_gets_every_record(nats_process: NatsProcess):
    # Found by the chaos run on NATS (bench/chaos.py --bus nats): the sink exited when JetStream answered its
    # first fetch after the restart with 503, and a commit during the outage failed.
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_timeout_s=1.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.outage"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    for n in range(100):
        await publisher.publish(topic, f"ex.S{n % 3}", str(n).encode(), msg_id=f"before-{n}")
    await publisher.flush()
    await publisher.stop()
    subscriber = bus.subscriber([topic], "outage")
    await subscriber.start()
    try:
        first = await subscriber.fetch(100, 5.0)
        assert first
        nats_process.stop()
        # Away: a fetch finds nothing and waits as long as it was told, a commit leaves its acks for later.
        began = time.monotonic()
        assert await subscriber.fetch(100, 0.5) == []
        assert time.monotonic() - began >= 0.4
        await subscriber.commit(first)
        await asyncio.to_thread(nats_process.start)
        publisher = bus.publisher()
        await publisher.start()
        for n in range(100, 200):
            await publisher.publish(topic, f"ex.S{n % 3}", str(n).encode(), msg_id=f"after-{n}")
        await publisher.flush()
        await publisher.stop()
        # Back: every record comes (those whose acks were lost again, which at least once allows).
        got = {int(d.value) for d in first}
        deadline = time.monotonic() + 60
        while len(got) < 200 and time.monotonic() < deadline:
            deliveries = await subscriber.fetch(100, 1.0)
            got |= {int(d.value) for d in deliveries}
            await subscriber.commit(deliveries)
        assert got == set(range(200))
    finally:
        await subscriber.stop()


async def test_a_publisher_waits_for_a_stopped_server_instead_of_overflowing_its_buffer(nats_process: NatsProcess):
    # Found by the chaos run on NATS (bench/chaos.py --bus nats): ingest exited, losing the trades it held, when
    # the client's reconnect buffer (2 MB) overflowed a second into a NATS outage.
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_timeout_s=30.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.away"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    total, value = 6000, b"x" * 1000  # 6 MB: three times the reconnect buffer

    async def outage() -> None:
        await asyncio.sleep(2.0)  # the outage lasts this long
        await asyncio.to_thread(nats_process.start)

    try:
        await publisher.publish(topic, "ex.S", b"0:" + value, msg_id="m-0")
        await publisher.flush()
        nats_process.stop()
        restart = asyncio.ensure_future(outage())
        for n in range(1, total):
            if n % 100 == 0:
                await asyncio.sleep(0.01)  # as a feed does: the client gets to see its connection gone
            await publisher.publish(topic, f"ex.S{n % 5}", f"{n}:".encode() + value, msg_id=f"m-{n}")
        await restart
    finally:
        await publisher.stop()
    stored = [int(d.value.split(b":")[0]) for d in await bus.read_topic(topic)]
    assert len(stored) == len(set(stored)) and set(stored) == set(range(total))


async def test_publishes_during_a_resend_after_a_reconnect_are_kept_and_stored(nats_process: NatsProcess):
    # A flush re-sends the unconfirmed window after a reconnect without holding the send lock (the NATS worker's
    # two stages share one publisher): what another task publishes meanwhile joins the window. The re-send
    # iterated the window across its awaits (RuntimeError: deque mutated) and then confirmed the whole window,
    # the newcomers too, on the acks of the re-sent messages only.
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_every=100_000, ack_timeout_s=10.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.resend"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    try:
        for n in range(200):  # never acked: all in the window
            await publisher.publish(topic, f"ex.S{n % 3}", str(n).encode(), msg_id=f"m-{n}")
        nats_process.stop()
        await asyncio.to_thread(nats_process.start)
        await asyncio.wait_for(publisher._reconnect.wait(), 30.0)  # the client's reconnect callback has run
        late = [publisher.publish(topic, "ex.L", str(n).encode(), msg_id=f"m-{n}") for n in range(200, 240)]
        await asyncio.gather(publisher.flush(), *late)
        await publisher.flush()
    finally:
        await publisher.stop()
    stored = [int(d.value) for d in await bus.read_topic(topic)]
    assert len(stored) == len(set(stored)) and set(stored) == set(range(240))


async def test_a_server_away_longer_than_the_ack_timeout_holds_the_publisher_and_loses_nothing(
    nats_process: NatsProcess,
):
    # Ingest exited on NATS (not on Kafka) when the server was away longer than bus.nats.ack_timeout_s: the
    # publisher now waits and re-sends under SERVER_RETRY for as long as it takes, and the caller waits with it.
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_every=64, ack_timeout_s=1.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.long"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    retried = PUBLISH_RETRIES.labels(topic)._value.get()
    try:
        await publisher.publish(topic, "ex.S", b"0", msg_id="m-0")
        await publisher.flush()
        nats_process.stop()
        publishing = asyncio.ensure_future(publish_range(publisher, topic, 1, 3000))
        await asyncio.sleep(4.0)  # four ack timeouts: the server stays away this long
        assert not publishing.done(), publishing  # held (the backpressure), not failed
        await asyncio.to_thread(nats_process.start)
        await publishing
        await publisher.flush()
    finally:
        await publisher.stop()
    assert PUBLISH_RETRIES.labels(topic)._value.get() > retried  # counted (and logged) while it waited
    stored = [int(d.value) for d in await bus.read_topic(topic)]
    assert len(stored) == len(set(stored)) and set(stored) == set(range(3000))


async def test_a_stop_while_the_server_is_away_ends_within_the_ack_timeout_and_says_what_is_lost(
    nats_process: NatsProcess, caplog
):
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_every=64, ack_timeout_s=1.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.gone"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    await publish_range(publisher, topic, 0, 10)
    nats_process.stop()
    publishing = asyncio.ensure_future(publish_range(publisher, topic, 10, 2000))
    await asyncio.sleep(1.5)
    publishing.cancel()  # as ingest's shutdown cancels its publishing task
    with contextlib.suppress(asyncio.CancelledError):
        await publishing
    started = time.monotonic()
    with pytest.raises(BusError, match="not confirmed"):
        await publisher.stop()
    assert time.monotonic() - started < config.ack_timeout_s + 2.0
    assert any(record.getMessage().endswith("has not confirmed: lost") for record in caplog.records)


async def publish_range(publisher: Publisher, topic: str, start: int, end: int) -> None:
    for n in range(start, end):
        if n % 100 == 0:
            await asyncio.sleep(0.01)  # as a feed does: the client gets to see its connection gone
        await publisher.publish(topic, f"ex.S{n % 5}", str(n).encode(), msg_id=f"m-{n}")


async def test_a_resend_that_jetstream_refuses_fails_within_the_ack_timeout(nats_process: NatsProcess):
    # A subject no stream takes: JetStream answers "no responders" for ever, unlike a server restarting. The
    # re-send retries that only for ack_timeout_s, then fails (the chaos run hit this path with a TypeError).
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_every=1, ack_timeout_s=1.0)
    publisher = open_bus(BusConfig(kind="nats", nats=config)).publisher()
    await publisher.start()
    started = time.monotonic()
    try:
        with pytest.raises(BusError, match="did not confirm"):
            await publisher.publish("test.nostream", "ex.S", b"0", msg_id="m-0")
            await publisher.flush()
        assert time.monotonic() - started < config.ack_timeout_s + 5.0
    finally:
        with contextlib.suppress(BusError):
            await publisher.stop()
