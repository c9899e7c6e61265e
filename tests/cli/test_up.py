"""``up --simulate`` runs the pipeline on the simulator and stops cleanly; ``tail`` shows what it published, one event
per line, counting events (not records) for ``--limit``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.cli.main import cli
from market_ingestor.config import BatchConfig, BusConfig, KafkaConfig
from market_ingestor.model import Trade, decode, encode

pytestmark = pytest.mark.kafka


def up_config(dev_stack, tmp_path, prefix: str, more: str = "") -> Path:  # type: ignore[no-untyped-def]
    """A config for ``up`` on the dev stack's Kafka under ``prefix``, binance BTCUSDT only, plus ``more``."""
    config = tmp_path / "market-ingestor.toml"
    config.write_text(
        f'[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\n'
        f'{more}[exchanges.binance]\nsymbols = ["BTCUSDT"]\n'
    )
    return config


async def test_up_on_the_simulator_publishes_and_exits_0_on_sigint(dev_stack, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = up_config(dev_stack, tmp_path, prefix)
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
    trades = [decode(line) for line in lines]  # each line one event, not a batch record
    assert all(isinstance(t, Trade) for t in trades) and len({t.trade_id for t in trades}) == 5  # type: ignore[union-attr]
    up.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(up.wait(), 60) == 0


def test_tail_prints_one_event_per_line_and_its_limit_counts_events(dev_stack, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    bus = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=1))
    trades = [Trade("binance", "BTCUSDT", str(n), Decimal("1.5"), Decimal("2"), "buy", n, n) for n in range(12)]

    async def publish() -> None:
        await open_bus(bus).ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
        # Records of 4 trades: the 6 events asked for end inside the second record.
        publisher = open_bus(msgspec.structs.replace(bus, batch=BatchConfig(max_events=4))).publisher()
        await publisher.start()
        for trade in trades:
            await publisher.publish(prefix + Topics.TRADES, bus_key(trade), encode(trade), event_id(trade))
        await publisher.stop()

    asyncio.run(publish())
    records = asyncio.run(open_bus(bus).read_topic(prefix + Topics.TRADES))
    assert [len(msgspec.json.decode(record.value)) for record in records] == [4, 4, 4]
    config = tmp_path / "market-ingestor.toml"
    config.write_text(f'[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "tail", prefix + Topics.TRADES, "-n", "6"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.splitlines() == [encode(trade) for trade in trades[:6]]


async def test_up_keeps_the_console_short_and_writes_each_services_log_to_its_file(dev_stack, tmp_path):
    more = "[ingest]\nmetrics_port = 0\n[push]\nport = 0\nmetrics_port = 0\n"
    config = up_config(dev_stack, tmp_path, f"t{uuid.uuid4().hex[:8]}.", more)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MARKET_INGESTOR_DEVSTACK_DIR": str(tmp_path / "stack")}
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config),
        "up", "--simulate", "--port", "0", "--rate", "200", "--with", "push",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert up.stdout is not None
    summary = [await asyncio.wait_for(up.stdout.readline(), 60)]
    while not summary[-1].startswith(b"Ctrl-C"):
        summary.append(await asyncio.wait_for(up.stdout.readline(), 10))
    status = await asyncio.wait_for(up.stdout.readline(), 30)
    up.send_signal(signal.SIGINT)
    rest, stderr = await asyncio.wait_for(up.communicate(), 60)
    assert up.returncode == 0
    logs = tmp_path / "stack" / "logs"
    assert any(line.startswith(b"  logs: ") and str(logs).encode() in line for line in summary)
    assert b"| rows stored" in status and b"push clients" in status
    # The console: the summary, status lines, and no INFO line of any service (those are in the files).
    assert all(b"| rows stored" in line for line in rest.splitlines()), rest
    assert b'"level":"INFO"' not in stderr and b"INFO" not in stderr, stderr
    ingest_log = (logs / "ingest.log").read_text()
    push_log = (logs / "push.log").read_text()
    assert '"level":"INFO"' in ingest_log and '"event":"connector started"' in ingest_log
    assert "push gateway listening" in push_log
