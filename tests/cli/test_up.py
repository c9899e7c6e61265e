"""``up --simulate`` runs the pipeline on the simulator and stops cleanly; ``tail`` shows what it published."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import pytest

pytestmark = pytest.mark.kafka


async def test_up_on_the_simulator_publishes_and_exits_0_on_sigint(dev_stack, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = tmp_path / "market-ingestor.toml"
    config.write_text(
        f'[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\n'
        '[exchanges.binance]\nsymbols = ["BTCUSDT"]\n'
    )
    cli = [sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = await asyncio.create_subprocess_exec(
        *cli, "up", "--simulate", "--port", "0", "--rate", "500", stdout=asyncio.subprocess.PIPE, env=env
    )
    assert up.stdout is not None
    banner = await asyncio.wait_for(up.stdout.readline(), 60)
    assert banner.startswith(b"pipeline running on the simulator")
    tail = await asyncio.create_subprocess_exec(
        *cli, "tail", f"{prefix}market.trades", "-n", "5", stdout=asyncio.subprocess.PIPE, env=env
    )
    out, _ = await asyncio.wait_for(tail.communicate(), 60)
    lines = out.splitlines()
    assert len(lines) == 5 and all(b'"type":"trade"' in line and b'"exchange":"binance"' in line for line in lines)
    up.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(up.wait(), 60) == 0
