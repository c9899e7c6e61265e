"""The ingest service end to end: simulator -> connectors -> real Kafka / NATS, steered by the control topic,
shut down gracefully with nothing lost; the ``ingest`` command under SIGTERM; capture files that replay."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from market_ingestor.bus import open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.records import BatchDecoder
from market_ingestor.bus.topics import Topics
from market_ingestor.config import BusConfig, Config, ExchangeConfig, IngestConfig, KafkaConfig, NatsConfig
from market_ingestor.errors import ParseError
from market_ingestor.ingestor.capture import received_frames
from market_ingestor.ingestor.control import command
from market_ingestor.ingestor.exchanges import ParseContext, get_spec
from market_ingestor.ingestor.service import IngestService
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.model import Trade, encode
from market_ingestor.simulator import Simulator, SimulatorConfig

pytestmark = [pytest.mark.kafka, pytest.mark.nats]


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), exchanges=("binance", "okx"), trades_per_s=800)
    async with Simulator(config) as sim:
        yield sim


def service_config(sim: Simulator, dev_stack, kind: str, prefix: str, **ingest) -> Config:  # type: ignore[no-untyped-def]
    return Config(
        bus=BusConfig(
            kind=kind,  # type: ignore[arg-type]
            topic_prefix=prefix,
            kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=2),
            nats=NatsConfig(url=dev_stack.nats_url, storage="memory"),
        ),
        ingest=IngestConfig(backoff_initial_s=0.05, backoff_max_s=0.2, **ingest),
        exchanges={
            "binance": ExchangeConfig(
                symbols=["BTCUSDT"], ws_url=sim.ws_url("binance"), rest_url=sim.rest_url("binance")
            ),
            "okx": ExchangeConfig(symbols=[], ws_url=sim.ws_url("okx"), rest_url=sim.rest_url("okx")),
        },
    )


async def read_trades(config: Config, prefix: str) -> list[Trade]:
    """Every trade on the topic: its records are batches of trades (docs/topics.md)."""
    deliveries = await open_bus(config.bus).read_topic(prefix + Topics.TRADES)
    return [trade for d in deliveries for trade in trades_of.decode(d.value)]


trades_of = BatchDecoder(Trade)


@pytest.mark.parametrize("kind", ["kafka", "nats"])
async def test_trades_reach_the_bus_and_a_graceful_stop_loses_none(simulator, dev_stack, tmp_path, kind):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    capture = tmp_path / "capture.txt"
    config = service_config(simulator, dev_stack, kind, prefix, capture_path=str(capture))
    service = CountingService(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 20)

    # Live control: okx gets a symbol through the control topic, without a restart.
    bus = open_bus(config.bus)
    publisher = bus.publisher()
    await publisher.start()
    cmd = command("add", "symbol", "okx", "ETHUSDT")
    await publisher.publish(prefix + Topics.CONTROL, bus_key(cmd), encode(cmd), event_id(cmd))
    await publisher.stop()
    await simulator.wait_stats("okx", lambda s: s.subscriptions > 0, timeout_s=20)
    await simulator.wait_stats("binance", lambda s: s.frames_sent > 50, timeout_s=20)
    await simulator.wait_stats("okx", lambda s: s.frames_sent > 20, timeout_s=20)

    simulator.stall("binance")  # what was sent is now fixed; the service must publish all of it
    simulator.stall("okx")
    sent = {ex: simulator.sent_trades(ex, symbol) for ex, symbol in (("binance", "BTCUSDT"), ("okx", "ETHUSDT"))}
    await asyncio.wait_for(service.taken(sum(s.count for s in sent.values())), 20)
    stop.set()
    await asyncio.wait_for(task, 30)

    trades = await read_trades(config, prefix)
    for exchange, symbol in (("binance", "BTCUSDT"), ("okx", "ETHUSDT")):
        mine = [t for t in trades if t.exchange == exchange and t.symbol == symbol]
        assert len({t.trade_id for t in mine}) == sent[exchange].count, exchange
        assert sum((t.qty for t in {t.trade_id: t for t in mine}.values()), Decimal(0)) == sent[exchange].qty

    # The capture file replays: every binance trade published is in it.
    spec = get_spec("binance")
    replayed = set()
    for record in received_frames(capture):
        try:
            events = spec.parse(record.payload, ParseContext(InstrumentRegistry(), record.recv_ts_ns))
        except ParseError:
            continue  # okx's frames, in the same capture
        replayed |= {e.trade_id for e in events if isinstance(e, Trade) and e.symbol == "BTCUSDT"}
    assert replayed >= {t.trade_id for t in trades if t.exchange == "binance"}


class CountingService(IngestService):
    """Counts the trades the connectors hand over, so the test can await them instead of polling."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.trades_taken = 0
        self.changed = asyncio.Condition()

    async def put(self, events) -> None:  # type: ignore[no-untyped-def]
        await super().put(events)
        self.trades_taken += sum(isinstance(event, Trade) for event in events)
        async with self.changed:
            self.changed.notify_all()

    async def taken(self, trades: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.trades_taken >= trades)


async def test_the_ingest_command_exits_0_on_sigterm_after_flushing(simulator, dev_stack, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = service_config(simulator, dev_stack, "kafka", prefix)
    path = tmp_path / "market-ingestor.toml"
    path.write_text(_toml(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "market_ingestor.cli.main",
        "--config",
        str(path),
        "ingest",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    await simulator.wait_stats("binance", lambda s: s.frames_sent > 100, timeout_s=30)
    simulator.stall("binance")
    sent = simulator.sent_trades("binance", "BTCUSDT")
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    trades = [t for t in await read_trades(config, prefix) if t.symbol == "BTCUSDT"]
    assert len({t.trade_id for t in trades}) == sent.count
    assert b'"event":"stopped"' in stderr


def _toml(config: Config) -> str:
    binance, okx = config.exchanges["binance"], config.exchanges["okx"]
    return f"""
[bus]
kind = "{config.bus.kind}"
topic_prefix = "{config.bus.topic_prefix}"
[bus.kafka]
bootstrap = "{config.bus.kafka.bootstrap}"
partitions = 2
[ingest]
backoff_initial_s = 0.05
[exchanges.binance]
symbols = ["BTCUSDT"]
ws_url = "{binance.ws_url}"
rest_url = "{binance.rest_url}"
[exchanges.okx]
enabled = false
ws_url = "{okx.ws_url}"
rest_url = "{okx.rest_url}"
"""


@pytest.mark.parametrize("kind", ["kafka", "nats"])
async def test_events_still_queued_at_stop_are_published_before_exit(dev_stack, kind):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = Config(
        bus=BusConfig(
            kind=kind,  # type: ignore[arg-type]
            topic_prefix=prefix,
            kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=2),
            nats=NatsConfig(url=dev_stack.nats_url, storage="memory"),
        ),
    )
    service = IngestService(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(service.ready.wait(), 20)
    count = 4_000
    for n in range(count):
        service.queue.put_nowait([Trade("binance", "QUEUEDUSDT", str(n), Decimal("1.5"), Decimal(n), "buy", n, n)])
    stop.set()  # most of them are still in the queue now
    await asyncio.wait_for(task, 60)
    trades = await read_trades(config, prefix)
    assert sorted(int(t.trade_id) for t in trades) == list(range(count))
