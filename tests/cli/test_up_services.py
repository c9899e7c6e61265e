"""``up --with``: which services it accepts, and a child service that fails stops the whole ``up`` with its name and
a non-zero status (here: a push gateway whose port is taken)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid

import click
import pytest

from market_ingestor.cli.services import SERVICES, parse_services


def test_services_are_named_or_all_and_unknown_ones_are_refused():
    assert parse_services("") == ()
    assert parse_services("api, push,api") == ("api", "push")
    assert parse_services("all") == SERVICES
    with pytest.raises(click.BadParameter, match=r"unknown service\(s\) sinks"):
        parse_services("worker,sinks")


@pytest.mark.kafka
async def test_a_child_that_exits_stops_up_and_is_named(dev_stack, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "market-ingestor.toml"
        config.write_text(
            f'[bus]\ntopic_prefix = "t{uuid.uuid4().hex[:8]}."\n'
            f'[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\n'
            f'[push]\nhost = "127.0.0.1"\nport = {port}\n[exchanges.binance]\nsymbols = ["BTCUSDT"]\n'
        )
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config),
            "up", "--simulate", "--port", "0", "--with", "push",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(up.communicate(), 90)
    assert up.returncode == 1
    assert "stopped: push exited with status 1" in stderr.decode()
