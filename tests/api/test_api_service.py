"""``market-ingestor api`` as a process, with the dev stack's Kafka and PostgreSQL: the ticker follows trades and
quotes published to Kafka in batch records (skipping malformed events), survives a restart in its Faust table, and
the process stops with status 0 on SIGTERM. (On NATS: ``test_api_service_nats.py``.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from api_helpers import EXPECTED, ApiProcess, T, free_port, publish, quote, trade

from market_ingestor.api.keys import create_key
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.config import BusConfig, KafkaConfig

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def setup(dev_stack, database_url, tmp_path) -> AsyncIterator[tuple[BusConfig, Path, str]]:
    prefix = f"a{uuid.uuid4().hex[:8]}."
    bus = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    await open_bus(bus).ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
    path = tmp_path / "market-ingestor.toml"
    path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\n'
        f'bootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 3\n[database]\nurl = "{database_url}"\n'
        f'[streams]\napp_id = "{prefix.rstrip(".")}"\n[api]\nauth_enabled = true\nticker_flush_s = 0.05\n'
    )
    connection = await asyncpg.connect(database_url)
    try:
        key = (await create_key(connection, "service-test")).key
    finally:
        await connection.close()
    yield bus, path, key


async def test_the_ticker_follows_kafka_and_survives_a_restart(setup):
    bus, config_path, key = setup
    api = ApiProcess(config_path, free_port(), key)
    try:
        await api.start()
        assert await api.status("/api/v1/ticker/binance/BTCUSDT", 404)  # nothing seen yet: unknown
        assert await api.status("/healthz", 200)
        assert await api.status("/metrics", 200)  # the process's own metrics, served by the API app

        # A new consumer group starts at the live edge once its partitions are assigned: send probes until one
        # shows, then everything sent afterwards is read.
        async def probe_seen() -> bool:
            await publish(bus, trade(f"p{time.monotonic_ns()}", T, "1", symbol="PROBEUSDT"))
            return await api.status("/api/v1/ticker/binance/PROBEUSDT", 200)

        await api.until(probe_seen, "reading the trades topic")
        await publish(bus, b"not a trade")  # a record of its own ("[not a trade]"): not JSON at all
        # A bad event in a batch record with good ones: skipped, the good ones are applied.
        await publish(
            bus, b'{"type": "trade", "price": "NaN"}', trade("1", T + 1_000_000_000, "42000.00"),
            trade("2", T + 2_000_000_001, "42000.20"),
            quote(T + 3_000_000_000, "42000.10", "42000.30"),
        )  # fmt: skip

        await api.until(lambda: api.answers("/api/v1/ticker/binance/BTCUSDT", EXPECTED), "showing the latest")
        both = await api.json("/api/v1/tickers?symbols=binance.BTCUSDT,binance.PROBEUSDT")
        assert [t["symbol"] for t in both["data"]] == ["BTCUSDT", "PROBEUSDT"] and both["data"][0] == EXPECTED
        assert both["data"][1]["quote"] is None and both["data"][1]["last_trade"]["price"] == "1"
        symbols = await api.json("/api/v1/symbols")
        assert {s["id"]: s["live"] for s in symbols["data"]} == {"binance.BTCUSDT": True, "binance.PROBEUSDT": True}
        assert await api.stop() == 0

        # A new instance reads the table's changelog: the ticker is there before any new event arrives.
        await api.start()
        assert await api.json("/api/v1/ticker/binance/BTCUSDT") == EXPECTED
        assert await api.stop() == 0
    finally:
        await api.close()
