"""The ingest service's status records on the real Kafka status topic: per exchange, its connector's state,
subscribed symbols and counters, keyed by instance and exchange; a stopped connector (exchange disabled, process
shutting down) gets a last ``stopped`` record. Plus the record's model and the instance name."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from market_ingestor.bus import open_bus
from market_ingestor.bus.keys import bus_key
from market_ingestor.bus.topics import Topics, topic_of
from market_ingestor.config import BusConfig, Config, ExchangeConfig, IngestConfig, KafkaConfig
from market_ingestor.ingestor.control import command, send_command
from market_ingestor.ingestor.service import IngestService
from market_ingestor.ingestor.status import instance_name
from market_ingestor.model import ConnectorStatus, decode, encode
from market_ingestor.simulator import Simulator, SimulatorConfig


def test_a_status_record_round_trips_and_is_keyed_by_instance_and_exchange():
    status = ConnectorStatus("host-1", "okx", "degraded", 2, 1, 3, 250, 10, 12, ["BTCUSDT"], 1)
    assert decode(encode(status)) == status
    assert topic_of(status) == Topics.STATUS
    assert bus_key(status) == "host-1.okx"


def test_instance_names_are_usable_as_keys_and_subject_tokens():
    assert instance_name("ingest.eu-west.example.com") == "ingest-eu-west-example-com"
    assert instance_name("a b/c") == "a-b-c"
    assert instance_name("") and "." not in instance_name("")  # the host name, made safe


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), exchanges=("binance", "okx"), trades_per_s=200)
    async with Simulator(config) as sim:
        yield sim


class StatusReader:
    def __init__(self, config: Config) -> None:
        self.follower = open_bus(config.bus).follower([config.bus.topic_prefix + Topics.STATUS])
        self.records: list[ConnectorStatus] = []

    async def until(self, found: Callable[[ConnectorStatus], bool], what: str) -> ConnectorStatus:
        deadline = time.monotonic() + 30
        seen = 0
        while True:
            for record in self.records[seen:]:
                if found(record):
                    return record
            seen = len(self.records)
            assert time.monotonic() < deadline, f"no status record {what}; last: {self.records[-3:]}"
            for delivery in await self.follower.fetch(timeout_s=0.5):
                event = decode(delivery.value)
                assert isinstance(event, ConnectorStatus) and delivery.key == bus_key(event)
                self.records.append(event)


@pytest.mark.kafka
async def test_connectors_report_their_state_and_stopping_is_reported(simulator, dev_stack):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = Config(
        bus=BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=2)),
        ingest=IngestConfig(status_interval_s=0.2, instance="status-test", backoff_initial_s=0.05),
        exchanges={
            "binance": ExchangeConfig(
                symbols=["BTCUSDT"], ws_url=simulator.ws_url("binance"), rest_url=simulator.rest_url("binance")
            ),
            "okx": ExchangeConfig(symbols=[], ws_url=simulator.ws_url("okx"), rest_url=simulator.rest_url("okx")),
        },
    )
    service = IngestService(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 20)
    reader = StatusReader(config)
    await reader.follower.start()
    try:
        binance = await reader.until(
            lambda s: s.exchange == "binance" and s.state == "connected" and s.events > 0, "binance connected"
        )
        assert (binance.instance, binance.connections, binance.connected, binance.symbols) == (
            "status-test", 1, 1, ["BTCUSDT"]
        )  # fmt: skip
        assert binance.frames > 0 and binance.last_message_age_ms is not None and binance.reconnects == 0
        assert abs(binance.ts - time.time_ns()) < 30_000_000_000
        okx = await reader.until(lambda s: s.exchange == "okx" and s.state == "idle", "okx idle (no symbol)")
        assert (okx.connections, okx.symbols) == (0, [])

        # Counters grow from one report to the next.
        later = await reader.until(lambda s: s.exchange == "binance" and s.events > binance.events, "more events")
        assert later.ts > binance.ts and later.frames > binance.frames

        # A symbol added through the control topic shows among the subscribed ones.
        await send_command(config, command("add", "symbol", "binance", "ETHUSDT"))
        await reader.until(lambda s: s.exchange == "binance" and s.symbols == ["BTCUSDT", "ETHUSDT"], "ETHUSDT")

        # Disabling an exchange: its connector stops and says so once.
        await send_command(config, command("remove", "exchange", "okx"))
        await reader.until(lambda s: s.exchange == "okx" and s.state == "stopped", "okx stopped")

        stop.set()
        await asyncio.wait_for(task, 30)
        last = await reader.until(lambda s: s.exchange == "binance" and s.state == "stopped", "binance stopped")
        assert last.connections == 0 and last.symbols == []
        # Nothing more comes from a stopped service (three reporting intervals).
        assert not [r for r in reader.records if r.ts > last.ts]
        assert not await reader.follower.fetch(timeout_s=0.6)
    finally:
        stop.set()
        await reader.follower.stop()
        if not task.done():
            task.cancel()
