"""Integration tests of the dev stack against real servers (Kafka, PostgreSQL, NATS JetStream)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from click.testing import CliRunner

from market_ingestor.cli.dev import dev
from market_ingestor.devstack import DevStackError, StackInfo, ensure_stack, stack_status, stop_stack, timescaledb_build
from market_ingestor.devstack.config import HOST, StackConfig
from market_ingestor.devstack.nats import NatsServer
from market_ingestor.devstack.postgres import TimescaleServer
from market_ingestor.devstack.process import pid_alive, port_open, spawn_detached, terminate, wait_until

# Far enough from the default ports that the isolated stack never meets the shared one.
ISOLATED_PORT_OFFSET = 1000
EXTERNAL_ENVS = ("KAFKA_BOOTSTRAP", "DATABASE_URL", "TIMESCALEDB_URL", "NATS_URL")


# -- the shared stack ------------------------------------------------------------------------------------


def test_status_prints_json_for_every_server(dev_stack: StackInfo) -> None:
    result = CliRunner().invoke(dev, ["status"])

    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert set(status) == {"kafka", "postgres", "timescaledb", "nats", "prometheus"}
    assert status["kafka"]["bootstrap"] == dev_stack.kafka_bootstrap
    assert status["kafka"]["kind"] in {"apache-kafka", "tansu", "external"}
    assert status["postgres"]["url"] == dev_stack.database_url
    assert status["timescaledb"]["url"] == dev_stack.timescaledb_url
    assert status["nats"]["url"] == dev_stack.nats_url
    running = {name: server["running"] for name, server in status.items() if name != "prometheus"}  # on request
    assert running == {"kafka": True, "postgres": True, "nats": True, "timescaledb": bool(dev_stack.timescaledb_url)}


def test_ensure_stack_reuses_running_servers(dev_stack: StackInfo) -> None:
    again = ensure_stack()

    assert again.started == ()
    assert (again.kafka_bootstrap, again.database_url, again.nats_url) == (
        dev_stack.kafka_bootstrap,
        dev_stack.database_url,
        dev_stack.nats_url,
    )


@pytest.mark.kafka
async def test_kafka_round_trip(dev_stack: StackInfo) -> None:
    topic = await _fresh_topic(dev_stack.kafka_bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=dev_stack.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"tick", key=b"BTC-USDT")
    finally:
        await producer.stop()

    assert await _read_values(dev_stack.kafka_bootstrap, topic, count=1) == [b"tick"]


@pytest.mark.kafka
async def test_kafka_transactions_hide_aborted_records(dev_stack: StackInfo) -> None:
    if not dev_stack.supports_transactions:
        pytest.skip(f"{dev_stack.kafka_kind} broker has no transactions")
    topic = await _fresh_topic(dev_stack.kafka_bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=dev_stack.kafka_bootstrap, transactional_id=f"tx-{topic}")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed", partition=0)
    finally:
        await producer.stop()

    assert await _read_values(dev_stack.kafka_bootstrap, topic, count=1) == [b"committed"]


@pytest.mark.postgres
async def test_postgres_answers(dev_stack: StackInfo) -> None:
    connection = await asyncpg.connect(dev_stack.database_url)
    try:
        assert await connection.fetchval("select 1") == 1
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_plain_postgres_has_no_timescaledb_and_the_other_preloads_it(dev_stack: StackInfo) -> None:
    plain = await asyncpg.connect(dev_stack.database_url)
    try:
        assert "timescaledb" not in await plain.fetchval("SHOW shared_preload_libraries")
    finally:
        await plain.close()
    if dev_stack.timescaledb_url is None:
        pytest.skip(f"no TimescaleDB in this dev stack: {dev_stack.timescaledb_missing}")
    timescale = await asyncpg.connect(dev_stack.timescaledb_url)
    try:
        assert await timescale.fetchval("SHOW shared_preload_libraries") == "timescaledb"
        version = "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
        assert await timescale.fetchval(version) == timescaledb_build.TIMESCALEDB_VERSION
    finally:
        await timescale.close()


def test_without_the_source_timescaledb_stays_down_and_status_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's fresh clone: no ../shared beside it and nothing cached.
    monkeypatch.setenv(timescaledb_build.ENV_SOURCE, str(tmp_path / "absent.tar.gz"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TIMESCALEDB_URL", raising=False)
    server = TimescaleServer(StackConfig(tmp_path / "stack", port_offset=ISOLATED_PORT_OFFSET))

    assert server.ensure(timeout=10) is False
    status = server.status()
    assert status["running"] is False and status["kind"] == "unavailable"
    assert "no TimescaleDB source" in str(status["reason"]) and "absent.tar.gz" in str(status["reason"])
    assert not (tmp_path / "stack" / "timescaledb" / "data").exists()


@pytest.mark.nats
async def test_nats_jetstream_answers(dev_stack: StackInfo) -> None:
    client = await nats.connect(dev_stack.nats_url)
    try:
        info = await client.jetstream().account_info()
    finally:
        await client.close()

    assert info.limits is not None


# -- process helpers -------------------------------------------------------------------------------------


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    log = tmp_path / "stubborn.log"
    pid = spawn_detached([sys.executable, "-c", stubborn], pidfile=tmp_path / "stubborn.pid", logfile=log)
    wait_until(lambda: "up" in log.read_text(), what="stubborn", timeout=10, pid=pid)

    terminate(pid, grace_s=0.5)

    assert not pid_alive(pid)


def test_startup_failure_carries_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    pid = spawn_detached(["sh", "-c", "echo 'bind: address in use' >&2; exit 3"], pidfile=tmp_path / "p", logfile=log)

    with pytest.raises(DevStackError, match="address in use"):
        wait_until(lambda: False, what="crasher", timeout=10, pid=pid, logs=[log])


def test_a_pidfile_naming_another_program_is_not_ours(tmp_path: Path) -> None:
    # After a reboot the recorded pid may belong to anything; `down` must not kill it.
    nats_server = NatsServer(StackConfig(tmp_path, port_offset=ISOLATED_PORT_OFFSET))
    nats_server.home.mkdir()
    nats_server.pidfile.write_text(f"{os.getpid()}\n")

    assert nats_server.live_pid() is None
    assert nats_server.stop() is False


# -- an isolated second stack, so `down` can be tested without killing the shared one --------------------


@pytest.fixture
def isolated_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in EXTERNAL_ENVS:
        monkeypatch.delenv(name, raising=False)
    ports = list(StackConfig(Path("unused"), ISOLATED_PORT_OFFSET).ports().values())
    if any(port_open(HOST, port) for port in ports):
        pytest.skip(f"ports {ports} are in use")
    # Not pytest's tmp_path: that is private to root, and PostgreSQL runs as an unprivileged user.
    directory = Path(tempfile.mkdtemp(prefix="market-ingestor-devstack-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        stop_stack(directory, port_offset=ISOLATED_PORT_OFFSET)
        shutil.rmtree(directory, ignore_errors=True)


def test_down_leaves_no_process_behind(isolated_dir: Path) -> None:
    info = ensure_stack(isolated_dir, port_offset=ISOLATED_PORT_OFFSET)
    assert set(info.started) == {"kafka", "postgres", "nats"} | ({"timescaledb"} if info.timescaledb_url else set())
    status = stack_status(isolated_dir, port_offset=ISOLATED_PORT_OFFSET)
    pids = [server["pid"] for name, server in status.items() if name != "prometheus"]  # not asked for here
    assert all(isinstance(pid, int) and pid_alive(pid) for pid in pids)
    for cluster in ("postgres", "timescaledb") if info.timescaledb_url else ("postgres",):
        postmaster = status[cluster]["pid"]
        assert isinstance(postmaster, int)
        pids += _children_of(postmaster)

    cli_args = ["down", "--dir", str(isolated_dir), "--port-offset", str(ISOLATED_PORT_OFFSET)]
    result = CliRunner().invoke(dev, cli_args)

    assert result.exit_code == 0, result.output
    assert "kafka" in result.output and "postgres" in result.output and "nats" in result.output
    assert ("timescaledb" in result.output) == bool(info.timescaledb_url)
    assert [pid for pid in pids if isinstance(pid, int) and pid_alive(pid)] == []
    after = stack_status(isolated_dir, port_offset=ISOLATED_PORT_OFFSET)
    assert not any(server["running"] for server in after.values())


# -- helpers ---------------------------------------------------------------------------------------------


async def _fresh_topic(bootstrap: str) -> str:
    topic = f"devstack-test-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def _read_values(bootstrap: str, topic: str, *, count: int) -> list[bytes | None]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes | None] = []
    try:
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=10_000)
            if not batches:
                break
            values += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    return values


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[-1].split()[1]) == parent:
            children.append(int(entry))
    return children
