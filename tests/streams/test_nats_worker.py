"""The stream worker on the dev stack's NATS JetStream: two workers share the shards and one takes over the other's
when it is killed, with klines equal to the pure computation and stored once; and the same trades give the same
klines and indicator values on NATS as on Kafka; a worker rides out a NATS restart."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from decimal import Decimal

import nats
import pytest
from click.testing import CliRunner
from worker_harness import (
    MINUTE,
    KlineWatcher,
    assert_same_indicators,
    assert_same_klines,
    bus_config,
    expected_indicators,
    expected_klines,
    make_trades,
    publish,
    start_worker,
    stop_worker,
    until_or_fail,
    worker_config,
    worker_said,
)

from market_ingestor.bus.nats import NatsPublisher, connect_client, stream_name
from market_ingestor.bus.topics import Topics
from market_ingestor.cli.main import cli
from market_ingestor.config import BusConfig, NatsConfig, load_config
from market_ingestor.model import Trade
from market_ingestor.streams.nats_state import bucket_name, read_bucket
from market_ingestor.streams.nats_worker import KlineStage, NatsWorker
from nats_helpers import NatsProcess, free_port

pytestmark = pytest.mark.nats


async def lease_holders(nats_url: str, app_id: str) -> dict[int, str]:
    client = await nats.connect(nats_url)
    try:
        entries = await read_bucket(client.jetstream(), bucket_name(app_id, "leases"))
    finally:
        await client.close()
    return {int(key.split(".")[1]): entry.value.decode() for key, entry in entries.items() if key.startswith("shard.")}


async def until_holders(
    nats_url: str, app_id: str, done: Callable[[dict[int, str]], bool], timeout_s: float = 60.0
) -> dict[int, str]:
    async def poll() -> dict[int, str]:
        while True:
            holders = await lease_holders(nats_url, app_id)
            if done(holders):
                return holders
            await asyncio.sleep(0.2)  # leases change on the server; it offers no event to await here

    return await asyncio.wait_for(poll(), timeout_s)


async def test_two_workers_share_the_shards_and_one_takes_over_when_the_other_is_killed(dev_stack, tmp_path):
    prefix = f"n{uuid.uuid4().hex[:8]}."
    app_id = prefix.rstrip(".")
    config = bus_config(dev_stack, prefix, "nats")
    trades = make_trades(6000, seed=11)
    expected = expected_klines(trades)
    config_path = worker_config(tmp_path, "", prefix, "at_least_once", nats_url=dev_stack.nats_url)
    watcher = KlineWatcher(config)
    await watcher.start()
    first = second = None
    try:
        await publish(config, trades[:2000])
        first = await start_worker(config_path, tmp_path / "first")
        minutes = sorted((k for k in expected if k[1] == "1m"), key=lambda k: (k[2], k[0]))
        await until_or_fail(watcher, set(minutes[:6]), first)  # the first worker holds every shard, mid-stream
        second = await start_worker(config_path, tmp_path / "second")
        # Four shards: the first releases two (after a checkpoint), the second claims them.
        shared = await until_holders(dev_stack.nats_url, app_id, lambda h: len(h) == 4 and len(set(h.values())) == 2)
        await publish(config, trades[2000:4000])
        await until_or_fail(watcher, set(minutes[:30]), second)
        first.send_signal(signal.SIGKILL)  # mid-stream: its last outputs and rows may not be checkpointed
        await first.wait()
        survivor = await until_holders(dev_stack.nats_url, app_id, lambda h: len(h) == 4 and len(set(h.values())) == 1)
        await publish(config, trades[4000:])
        indicators = expected_indicators(expected)
        await until_or_fail(watcher, set(expected), second, {key: set(values) for key, values in indicators.items()})
        await stop_worker(second)
    finally:
        for worker in (first, second):
            if worker is not None and worker.returncode is None:
                worker.kill()
        await watcher.follower.stop()
    assert len(set(shared.values())) == 2
    assert {f"-{second.pid}-" in holder for holder in survivor.values()} == {True}  # the second one took over
    assert_same_klines(watcher.closed, expected)
    repeated = [(key, count) for key, count in watcher.closings.items() if count > 1]
    assert not repeated, f"{len(repeated)} closed klines stored more than once, e.g. {repeated[:3]}"
    assert_same_indicators(watcher, indicators)
    # A clean stop gives the leases back at once: nothing for a successor to wait for.
    assert await lease_holders(dev_stack.nats_url, app_id) == {}
    # Everything was checkpointed: every shard's checkpoint of both stages is past the end of its input stream.
    client = await nats.connect(dev_stack.nats_url)
    try:
        js = client.jetstream()
        checkpoints = await read_bucket(js, bucket_name(app_id, "progress"))
        ends = {
            stage: (await js.stream_info(stream_name(prefix + topic))).state.last_seq + 1
            for stage, topic in (("klines", Topics.TRADES), ("indicators", Topics.KLINES))
        }
    finally:
        await client.close()
    assert {key: int(entry.value) for key, entry in checkpoints.items()} == {
        f"{stage}.{shard}": end for stage, end in ends.items() for shard in range(4)
    }


@pytest.mark.kafka
async def test_the_same_trades_give_the_same_klines_and_indicators_on_nats_as_on_kafka(dev_stack, tmp_path):
    trades = make_trades(3000, seed=12)
    expected = expected_klines(trades)
    indicators = expected_indicators(expected)
    wanted_values = {key: set(values) for key, values in indicators.items()}
    seen: dict[str, KlineWatcher] = {}
    for bus in ("kafka", "nats"):
        prefix = f"{bus[0]}{uuid.uuid4().hex[:8]}."
        config = bus_config(dev_stack, prefix, bus)
        nats_url = dev_stack.nats_url if bus == "nats" else None
        directory = tmp_path / bus
        directory.mkdir()
        config_path = worker_config(directory, dev_stack.kafka_bootstrap, prefix, "at_least_once", nats_url=nats_url)
        watcher = seen[bus] = KlineWatcher(config)
        await watcher.start()
        try:
            await publish(config, trades)
            worker = await start_worker(config_path, directory / "data")
            await until_or_fail(watcher, set(expected), worker, wanted_values)
            await stop_worker(worker)
        finally:
            await watcher.follower.stop()
    kafka, on_nats = seen["kafka"], seen["nats"]
    assert set(kafka.closed) == set(on_nats.closed) == set(expected)
    assert {key: on_nats.closed[key] for key in expected} == {key: kafka.closed[key] for key in expected}
    for key, want in wanted_values.items():
        assert {t: on_nats.indicators[key][t] for t in want} == {t: kafka.indicators[key][t] for t in want}


async def test_a_worker_rides_out_a_nats_restart_mid_stream_and_its_outputs_stay_exact(tmp_path):
    # Found by the chaos run on NATS (bench/chaos.py --bus nats): both workers exited when the server went away
    # while they read (the stream consumer could not be made again), failing the whole worker.
    server = NatsProcess(tmp_path / "store", free_port())  # its own server: the test stops it
    server.start()
    prefix = f"r{uuid.uuid4().hex[:8]}."
    config = BusConfig(kind="nats", topic_prefix=prefix, nats=NatsConfig(url=server.url))
    trades = make_trades(6000, seed=13)
    expected = expected_klines(trades)
    indicators = expected_indicators(expected)
    config_path = worker_config(tmp_path, "", prefix, "at_least_once", nats_url=server.url)
    worker = None
    watcher = KlineWatcher(config)
    try:
        await watcher.start()
        await publish(config, trades[:4000])
        worker = await start_worker(config_path, tmp_path / "data")
        minutes = sorted((k for k in expected if k[1] == "1m"), key=lambda k: (k[2], k[0]))
        await until_or_fail(watcher, set(minutes[:3]), worker)  # mid-stream
        await watcher.follower.stop()
        server.stop()
        await asyncio.sleep(6)  # an outage longer than a JetStream API request's timeout (5 s)
        server.start()
        assert worker.returncode is None, await worker_said(worker)
        await publish(config, trades[4000:])
        watcher = KlineWatcher(config)  # from the start of the streams again
        await watcher.start()
        wanted = {key: set(values) for key, values in indicators.items()}
        await until_or_fail(watcher, set(expected), worker, wanted)
        await stop_worker(worker)
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
        await watcher.follower.stop()
        server.kill()
    assert_same_klines(watcher.closed, expected)
    assert_same_indicators(watcher, indicators)


def test_exactly_once_on_nats_is_refused_with_the_reason(tmp_path):
    config = tmp_path / "nats.toml"
    config.write_text('[bus]\nkind = "nats"\n[streams]\nprocessing_guarantee = "exactly_once"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "worker"])
    assert result.exit_code == 1
    assert "exactly_once needs Kafka transactions" in result.output


async def checkpoints_and_ends(nats_url: str, prefix: str) -> tuple[dict[str, int], dict[str, int]]:
    """Every checkpoint of both stages, and where each stage's input stream ends (the next sequence)."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        checkpoints = await read_bucket(js, bucket_name(prefix.rstrip("."), "progress"))
        ends = {
            stage: (await js.stream_info(stream_name(prefix + topic))).state.last_seq + 1
            for stage, topic in (("klines", Topics.TRADES), ("indicators", Topics.KLINES))
        }
    finally:
        await client.close()
    return {key: int(entry.value) for key, entry in checkpoints.items()}, ends


async def test_a_paused_worker_and_a_nats_restart_leave_both_stages_of_every_shard_moving(tmp_path):
    # Found by the 10-minute chaos run on NATS: after a worker was paused past its lease TTL and NATS was stopped,
    # the kline stage kept some shards' checkpoints where they were while the indicator stage went on.
    server = NatsProcess(tmp_path / "store", free_port())  # its own server: the test stops it
    server.start()
    prefix = f"p{uuid.uuid4().hex[:8]}."
    app_id = prefix.rstrip(".")
    config = BusConfig(kind="nats", topic_prefix=prefix, nats=NatsConfig(url=server.url))
    trades = make_trades(8000, seed=14)
    expected = expected_klines(trades)
    indicators = expected_indicators(expected)
    config_path = worker_config(tmp_path, "", prefix, "at_least_once", nats_url=server.url)
    config_path.write_text(config_path.read_text().replace('level = "WARNING"', 'level = "INFO"'))
    minutes = sorted((k for k in expected if k[1] == "1m"), key=lambda k: (k[2], k[0]))
    first = second = None
    watcher = KlineWatcher(config)
    try:
        await watcher.start()
        await publish(config, trades[:2000])
        first = await start_worker(config_path, tmp_path / "first")
        await until_or_fail(watcher, set(minutes[:3]), first)
        second = await start_worker(config_path, tmp_path / "second")
        await until_holders(server.url, app_id, lambda h: len(h) == 4 and len(set(h.values())) == 2)
        second.send_signal(signal.SIGSTOP)  # longer than the lease TTL (3 s): the first takes its shards
        await until_holders(
            server.url, app_id, lambda h: len(h) == 4 and {f"-{first.pid}-" in w for w in h.values()} == {True}
        )
        await publish(config, trades[2000:4000])
        second.send_signal(signal.SIGCONT)  # it finds its leases lost, then gets its share back
        await until_holders(server.url, app_id, lambda h: len(h) == 4 and len(set(h.values())) == 2)
        await until_or_fail(watcher, set(minutes[:12]), first)
        await watcher.follower.stop()
        server.stop()
        await asyncio.sleep(6)  # longer than the lease TTL and a JetStream API request's timeout (5 s)
        server.start()
        await publish(config, trades[4000:])
        watcher = KlineWatcher(config)  # from the start of the streams again
        await watcher.start()
        wanted = {key: set(values) for key, values in indicators.items()}
        await until_or_fail(watcher, set(expected), first, wanted)
        assert second.returncode is None, await worker_said(second)
        await stop_worker(first)
        await stop_worker(second)
        checkpoints, ends = await checkpoints_and_ends(server.url, prefix)  # a clean stop checkpoints
    finally:
        for worker in (first, second):
            if worker is not None and worker.returncode is None:
                worker.kill()
        await watcher.follower.stop()
        server.kill()
    assert_same_klines(watcher.closed, expected)
    assert_same_indicators(watcher, indicators)
    assert checkpoints == {f"{stage}.{shard}": end for stage, end in ends.items() for shard in range(4)}


async def test_a_held_up_kline_stage_closes_no_window_by_the_wall_clock_past_its_last_read(dev_stack, tmp_path):
    # The first symptom of the 10-minute chaos run on NATS that stalled: the kline of the minute of the NATS stop
    # with the trades up to the stop only, then two minutes closed flat. A checkpoint waited for NATS (holding the
    # kline stage) while trades piled up in the stream; the timer then closed the windows the wall clock had passed
    # meanwhile without them, as if the instruments had been quiet (the reader's last "caught up" was from before
    # the wait), to correct them once read.
    prefix = f"h{uuid.uuid4().hex[:8]}."
    path = worker_config(tmp_path, "", prefix, "at_least_once", nats_url=dev_stack.nats_url)
    # Leases that outlast the test (the timer closes nothing without them); a short grace.
    path.write_text(path.read_text().replace("lease_ttl_s = 3.0", "lease_ttl_s = 60.0") + "grace_ms = 100\n")
    config = load_config(path, environ={})
    bus = bus_config(dev_stack, prefix, "nats")
    end = (1_700_000_000_000_000_000 // MINUTE) * MINUTE  # the window [end - 1 min, end)
    early, held = (
        Trade("binance", "AAAUSDT", str(n), Decimal(price), Decimal(1), "buy", end - ms * 1_000_000, end)
        for n, price, ms in ((1, "100", 300), (2, "101", 200))
    )
    watcher = KlineWatcher(bus)
    await watcher.start()
    await publish(bus, [early])
    client = await connect_client(config.bus.nats)
    publisher = NatsPublisher(config.bus.nats, config.bus.batch)
    await publisher.start()
    worker = NatsWorker(config, client, publisher)
    stage = worker.stages[0]
    assert isinstance(stage, KlineStage)
    try:
        await worker.leases.start()
        for each in worker.stages:
            await each.start()
        await worker.balance()  # the only member: it takes every shard
        while stage.reader.next_seq < 2 or stage.reader.pending != 0:
            await stage.step()  # the early trade read and applied, the stream read to its end
        await publish(bus, [held])  # in the stream, unread: the loop is held up (by a checkpoint waiting for NATS)
        await asyncio.sleep(0.5)  # the wall clock passes the window's end + grace, extrapolated from the early trade
        await stage.tick()
        await stage.step()  # the held trade read
        await asyncio.sleep(0.5)  # the wall clock passes the window's end + grace again, from the held trade
        await stage.step()  # nothing more: the stream read to its end now
        await stage.tick()  # both trades in: the window closes
        await publisher.flush()
        key = ("AAAUSDT", "1m", end - MINUTE)
        await watcher.until(lambda: key in watcher.closed, timeout_s=30.0)
    finally:
        for each in worker.stages:
            await each.reader.stop()
        await publisher.stop()
        await client.close()
        await watcher.follower.stop()
    assert watcher.closed[key].trade_count == 2
    assert {k[3]: n for k, n in watcher.closings.items() if k[:3] == key} == {0: 1}  # closed once, never corrected
