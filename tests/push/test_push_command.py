"""``market-ingestor push`` as a process: serves clients, and on SIGTERM closes them with 1001 and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid

import pytest
from click.testing import CliRunner
from push_helpers import event_of, open_client, publish, recv_json, request, trade, unique_symbol
from websockets.exceptions import ConnectionClosed

from market_ingestor.bus import open_bus
from market_ingestor.cli.main import cli
from market_ingestor.config import load_config

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_push_serves_updates_and_exits_0_closing_clients_with_1001_on_a_signal(dev_stack, tmp_path, signum):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config_file = tmp_path / "market-ingestor.toml"
    config_file.write_text(
        f'[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 2\n'
        '[push]\nhost = "127.0.0.1"\n'
    )
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
        symbol = unique_symbol()
        async with open_client(int(match.group(1))) as ws:
            await request(ws, action="subscribe", channels=["trade"], symbols=[f"binance.{symbol}"])
            publisher = open_bus(load_config(config_file, environ={}).bus).publisher()
            await publisher.start()
            await publish(publisher, prefix, trade(symbol, 1))
            await publisher.stop()
            assert event_of(await recv_json(ws)) == trade(symbol, 1)
            process.send_signal(signum)
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws, 30)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutting down")
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_push_refuses_to_start_with_auth_enabled_until_a_key_store_is_wired(tmp_path):
    config_file = tmp_path / "market-ingestor.toml"
    config_file.write_text("[push]\nauth_enabled = true\n")
    result = CliRunner().invoke(cli, ["--config", str(config_file), "push"])
    assert result.exit_code == 1
    assert "push.auth_enabled" in result.output and "Traceback" not in result.output


def test_a_bad_push_setting_names_the_field():
    result = CliRunner().invoke(cli, ["push"], env={"MARKET_INGESTOR__PUSH__QUEUE_SIZE": "0"})
    assert result.exit_code == 1
    assert "$.push.queue_size" in result.output
