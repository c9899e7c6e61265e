"""``market-ingestor push`` as a process: serves clients, checks API keys against the key store when asked to,
and on SIGTERM/SIGINT closes its clients with 1001 and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner
from push_helpers import event_of, open_client, publish, recv_json, request, trade, unique_symbol
from websockets.exceptions import ConnectionClosed, InvalidStatus

from market_ingestor.api.keys import create_key, revoke_key
from market_ingestor.bus import open_bus
from market_ingestor.cli.main import cli
from market_ingestor.config import load_config
from market_ingestor.sinks.schema import migrate

pytestmark = pytest.mark.kafka


@asynccontextmanager
async def push_process(config_file: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``market-ingestor push --port 0``; yields the process and the port from its banner."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_file), "push", "--port", "0"),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.match(r"push gateway listening on ws://127\.0\.0\.1:(\d+)/", banner)
        assert match, banner
        yield process, int(match.group(1))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def write_config(path: Path, kafka_bootstrap: str, extra: str = "") -> Path:
    path.write_text(
        f'[bus]\ntopic_prefix = "t{uuid.uuid4().hex[:8]}."\n[bus.kafka]\nbootstrap = "{kafka_bootstrap}"\n'
        f'partitions = 2\n[push]\nhost = "127.0.0.1"\nmetrics_port = 0\n{extra}'
    )
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_push_serves_updates_and_exits_0_closing_clients_with_1001_on_a_signal(dev_stack, tmp_path, signum):
    config_file = write_config(tmp_path / "market-ingestor.toml", dev_stack.kafka_bootstrap)
    bus_config = load_config(config_file, environ={}).bus
    symbol = unique_symbol()
    async with push_process(config_file) as (process, port), open_client(port) as ws:
        await request(ws, action="subscribe", channels=["trade"], symbols=[f"binance.{symbol}"])
        publisher = open_bus(bus_config).publisher()
        await publisher.start()
        await publish(publisher, bus_config.topic_prefix, trade(symbol, 1))
        await publisher.stop()
        assert event_of(await recv_json(ws)) == trade(symbol, 1)
        process.send_signal(signum)
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws, 30)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutting down")
        assert await asyncio.wait_for(process.wait(), 30) == 0


@pytest.fixture(scope="module")
async def database_url(dev_stack) -> AsyncIterator[str]:
    """A migrated database of this module's own (it holds the API keys), dropped afterwards."""
    name = f"test_push_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dev_stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = dev_stack.database_url.rsplit("/", 1)[0] + "/" + name
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.postgres
async def test_with_auth_enabled_push_admits_only_active_keys_of_the_key_store(dev_stack, database_url, tmp_path):
    connection = await asyncpg.connect(database_url)
    try:
        key = (await create_key(connection, "push-test")).key
        revoked = await create_key(connection, "revoked")
        await revoke_key(connection, revoked.id)
    finally:
        await connection.close()
    extra = f'auth_enabled = true\n[database]\nurl = "{database_url}"\n'
    config_file = write_config(tmp_path / "market-ingestor.toml", dev_stack.kafka_bootstrap, extra)
    async with push_process(config_file) as (_, port):
        for path in ("/", "/?api_key=mi_000000000000_" + "x" * 43, f"/?api_key={revoked.key}"):
            with pytest.raises(InvalidStatus) as refused:
                async with open_client(port, path=path):
                    pass
            assert refused.value.response.status_code == 401, path
        for options in ({"path": f"/?api_key={key}"}, {"additional_headers": {"X-API-Key": key}}):
            async with open_client(port, **options) as ws:  # type: ignore[arg-type]
                assert (await request(ws, action="ping"))["type"] == "pong"


def test_a_bad_push_setting_names_the_field():
    result = CliRunner().invoke(cli, ["push"], env={"MARKET_INGESTOR__PUSH__QUEUE_SIZE": "0"})
    assert result.exit_code == 1
    assert "$.push.queue_size" in result.output
