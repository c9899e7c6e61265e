"""``ingest`` and ``up`` serve /metrics and /healthz over HTTP; the counters follow what the simulator really sent:
trades per symbol exactly, and the reconnect, the dead letters and the sequence gap it was told to cause."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator

import pytest

from market_ingestor.simulator import Simulator, SimulatorConfig
from metrics_helpers import Scrape, answering, free_port, healthz, scrape, until

pytestmark = pytest.mark.kafka

CLI = (sys.executable, "-m", "market_ingestor.cli.main")


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), exchanges=("binance",), trades_per_s=400)
    async with Simulator(config) as sim:
        yield sim


async def test_ingest_counts_what_the_exchange_sent_and_the_faults_it_caused(dev_stack, simulator, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = tmp_path / "market-ingestor.toml"
    config.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\n'
        f'bootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 2\n'
        '[ingest]\nchannels = ["trades"]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.2\n'
        f'[exchanges.binance]\nsymbols = ["BTCUSDT", "ETHUSDT"]\nws_url = "{simulator.ws_url("binance")}"\n'
        f'rest_url = "{simulator.rest_url("binance")}"\n'
    )
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MARKET_INGESTOR__INGEST__METRICS_PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        *CLI, "--config", str(config), "ingest", stderr=asyncio.subprocess.PIPE, env=env
    )

    def died() -> str | None:
        return None if process.returncode is None else f"exit code {process.returncode}"

    try:
        await until(lambda: answering(port), "/healthz answers 200", alive=died)
        _, health = await healthz(port)
        assert health["state"] == "running" and health["exchanges"]["binance"]["symbols"] == 2
        await simulator.wait_stats("binance", lambda s: s.frames_sent > 100, timeout_s=20)

        # Faults: two unparseable frames, then a gap in BTCUSDT's trade ids.
        simulator.inject_malformed("binance", count=2)
        await until(lambda: counted(port, "market_dead_letters_total", 2), "two dead letters", alive=died)
        simulator.inject_gap("binance", "BTCUSDT")
        await until(lambda: counted(port, "market_sequence_gaps_total", 1), "a trade-id gap", alive=died)

        # Exactly what was sent: the feed is stalled, so the counts are final once ingest has them all.
        simulator.stall("binance")
        sent = {symbol: simulator.sent_trades("binance", symbol).count for symbol in ("BTCUSDT", "ETHUSDT")}

        async def all_counted() -> bool:
            got = await scrape(port)
            return all(got.value("market_events_total", symbol=s, type="Trade") >= n for s, n in sent.items())

        await until(all_counted, f"events counted for {sent}", alive=died)
        got = await scrape(port)
        for symbol, count in sent.items():
            assert got.value("market_events_total", exchange="binance", symbol=symbol, type="Trade") == count
            # One frame per trade; the broken copies are frames without a symbol.
            assert got.value("market_frames_total", exchange="binance", symbol=symbol) == count
        assert got.value("market_frames_total", exchange="binance", symbol="none") >= 2
        assert got.value("ingest_published_total", topic="market.trades") == sum(sent.values())
        assert got.value("ingest_latency_seconds_count", exchange="binance") > 0
        assert got.value("market_dead_letters_total", exchange="binance") == 2
        assert got.value("market_sequence_gaps_total", exchange="binance", symbol="BTCUSDT", kind="trade") == 1
        assert got.value("market_sequence_gaps_total", exchange="binance", symbol="ETHUSDT") == 0
        assert got.value("market_connections", exchange="binance") == 1
        assert got.value("market_reconnects_total", exchange="binance") == 0
        assert not got.matching("market_events_total", symbol="other")  # configured symbols keep their label

        # A dropped connection is one reconnect (the trades lost meanwhile are real gaps: not counted exactly).
        simulator.unstall("binance")
        assert await simulator.drop_connections("binance") == 1
        await until(lambda: counted(port, "market_reconnects_total", 1), "one reconnect", alive=died)
        assert (await scrape(port)).value("market_reconnects_total", exchange="binance") == 1

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def counted(port: int, name: str, want: int) -> bool:
    got: Scrape = await scrape(port)
    return got.value(name, exchange="binance") >= want


async def test_up_on_the_simulator_prints_and_serves_its_metrics(dev_stack, tmp_path):
    config = tmp_path / "market-ingestor.toml"
    config.write_text(
        f'[bus]\ntopic_prefix = "t{uuid.uuid4().hex[:8]}."\n[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\n'
        '[exchanges.okx]\nsymbols = ["BTCUSDT"]\n'
    )
    up = await asyncio.create_subprocess_exec(
        *CLI, "--config", str(config), "up", "--simulate", "--port", "0", "--rate", "300",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert up.stdout is not None
        banner = b"".join([await asyncio.wait_for(up.stdout.readline(), 60) for _ in range(3)]).decode()
        match = re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", banner)
        assert match, banner
        port = int(match.group(1))  # the environment asks tests for a free port: the banner says which
        assert (await healthz(port))[0] == 200

        async def okx_frames() -> bool:
            return (await scrape(port)).value("market_events_total", exchange="okx", symbol="BTCUSDT") > 0

        await until(okx_frames, "okx events counted")
        up.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(up.wait(), 60) == 0
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
