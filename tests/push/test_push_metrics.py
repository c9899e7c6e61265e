"""``push`` serves /metrics and /healthz on its metrics port, apart from the WebSocket port: connections, clients,
updates and refusals follow what real clients did."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from push_helpers import event_of, open_client, publish, recv_json, request, trade, unique_symbol
from websockets.exceptions import InvalidStatus

from market_ingestor.bus import open_bus
from market_ingestor.config import load_config
from market_ingestor.push.metrics import PushCollector, PushMetrics
from metrics_helpers import Scrape, answering, free_port, healthz, scrape, until


@pytest.mark.kafka
async def test_push_metrics_follow_clients_and_updates(dev_stack, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config_file = tmp_path / "market-ingestor.toml"
    config_file.write_text(
        f'[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 2\n'
        '[push]\nhost = "127.0.0.1"\nallowed_origins = ["https://app.example"]\n'
    )
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_file), "push", "--port", "0"),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MARKET_INGESTOR__PUSH__METRICS_PORT": str(port)},
    )
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.match(r"push gateway listening on ws://127\.0\.0\.1:(\d+)/", banner)
        assert match, banner
        ws_port = int(match.group(1))
        assert ws_port != port and await answering(port)
        with pytest.raises(InvalidStatus):
            async with open_client(ws_port, origin="https://elsewhere.example"):
                pass

        symbol = unique_symbol()
        async with open_client(ws_port) as first, open_client(ws_port, origin="https://app.example") as second:
            for ws in (first, second):
                await request(ws, action="subscribe", channels=["trade"], symbols=[f"binance.{symbol}"])
            publisher = open_bus(load_config(config_file, environ={}).bus).publisher()
            await publisher.start()
            await publish(publisher, prefix, trade(symbol, 1))
            await publisher.stop()
            for ws in (first, second):
                assert event_of(await recv_json(ws)) == trade(symbol, 1)
            got = await scrape(port)
            assert got.value("ws_connections_total") == 2 and got.value("ws_clients") == 2
            assert got.value("push_updates_received_total") >= 1
            assert got.value("push_messages_sent_total") >= 4  # two replies, two updates
            assert got.value("push_refused_total", reason="origin") == 1
            assert got.has("push_updates_dropped_total") and got.value("push_updates_dropped_total") == 0
            status, health = await healthz(port)
            assert status == 200 and health == {"status": "ok", "state": "running", "clients": 2}

        async def both_gone() -> bool:
            return (await scrape(port)).value("ws_clients") == 0

        await until(both_gone, "ws_clients back to 0")
        assert (await scrape(port)).value("ws_connections_total") == 2
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def test_the_collector_exposes_the_gateways_counters_without_counting_again():
    metrics = PushMetrics(clients=2, connections_total=7, updates_dropped_total=11, lag_disconnects_total=1)
    metrics.refused_total["origin"] += 3
    metrics.request_errors_total["bad_request"] += 4
    registry = CollectorRegistry()
    registry.register(PushCollector(metrics))
    got = Scrape(generate_latest(registry).decode())
    assert got.value("ws_connections_total") == 7 and got.value("ws_clients") == 2
    assert got.value("push_updates_dropped_total") == 11
    assert got.value("push_disconnects_total", reason="lag") == 1 and got.value("push_disconnects_total") == 1
    assert got.value("push_refused_total", reason="origin") == 3
    # Every refusal reason is a series from the start (at 0 until it happens): the dashboard's panel has data.
    assert {s.labels["reason"]: s.value for s in got.matching("push_refused_total")} == {
        "stopping": 0, "max_clients": 0, "origin": 3, "auth": 0, "auth_unavailable": 0
    }  # fmt: skip
    assert got.value("push_request_errors_total", code="bad_request") == 4
    metrics.clients = 0  # read at scrape time: the next scrape sees the gateway as it is now
    assert Scrape(generate_latest(registry).decode()).value("ws_clients") == 0
