"""Ingest and a Kafka broker away for longer than ``bus.kafka.request_timeout_ms``: the dev stack's own broker is
stopped and started again (the tests skip when Kafka is external).

While the broker is away the publisher keeps the batches it could not hand over and retries them (counted in
``kafka_publish_retries_total``), the bounded queue fills and the connector stops reading: every trade the
exchange sent is on the topic once the broker is back, each instrument's in trade-id order. A SIGTERM while the
broker is away still ends ingest within its shutdown bounds, the unsent events counted in the log."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from market_ingestor.bus import open_bus
from market_ingestor.bus.kafka import PUBLISH_RETRIES
from market_ingestor.bus.records import BatchDecoder
from market_ingestor.bus.topics import Topics
from market_ingestor.config import BusConfig, Config, ExchangeConfig, IngestConfig, KafkaConfig
from market_ingestor.devstack import StackInfo
from market_ingestor.devstack.config import StackConfig
from market_ingestor.devstack.server import LocalServer
from market_ingestor.devstack.stack import stack_servers
from market_ingestor.errors import BusError
from market_ingestor.ingestor.service import IngestService
from market_ingestor.model import Trade
from market_ingestor.simulator import Simulator, SimulatorConfig
from metrics_helpers import until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

REQUEST_TIMEOUT_MS = 2_000  # the broker stays away several times this long
SYMBOLS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture
def broker(dev_stack: StackInfo) -> Iterator[LocalServer]:
    """The dev stack's own Kafka broker, running again after the test whatever happened."""
    if dev_stack.kafka_kind == "external":
        pytest.skip("the test stops and starts the dev stack's own Kafka broker; this one is external")
    kafka = stack_servers(StackConfig.from_env())[0]
    yield kafka
    kafka.ensure(180.0)


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    # No keep-alive on either side: a connector held while a broker restarts (a minute on a loaded machine) reads
    # no pong either, and would lose its connection to the keep-alive rather than to anything under test.
    config = SimulatorConfig(port=0, symbols=SYMBOLS, exchanges=("binance",), trades_per_s=300, ping_interval_s=None)
    async with Simulator(config) as sim:
        yield sim


def outage_config(sim: Simulator, dev_stack: StackInfo, prefix: str) -> Config:
    return Config(
        bus=BusConfig(
            kind="kafka",
            topic_prefix=prefix,
            kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=2, request_timeout_ms=REQUEST_TIMEOUT_MS),
        ),
        # A small queue, so the connector is soon held (backpressure) rather than the queue holding everything.
        ingest=IngestConfig(
            channels=["trades"], queue_size=20, shutdown_timeout_s=3.0, ping_interval_s=3600.0, ping_timeout_s=3600.0
        ),
        exchanges={
            "binance": ExchangeConfig(
                symbols=list(SYMBOLS), ws_url=sim.ws_url("binance"), rest_url=sim.rest_url("binance")
            )
        },
    )


def retries() -> float:  # float-ok: a Prometheus sample
    return sum(sample.value for metric in PUBLISH_RETRIES.collect() for sample in metric.samples)


async def stop_broker(broker: LocalServer, service: IngestService) -> None:
    """Stops the broker, then waits until the publisher has retried and the connector is held."""
    before = retries()
    assert await asyncio.to_thread(broker.stop), "the dev stack's Kafka broker was not running"

    async def held() -> bool:
        return retries() > before and service.queue.full()

    await until(held, "publisher retrying and the queue full", timeout_s=60)


async def test_a_broker_away_longer_than_the_request_timeout_costs_no_trade(dev_stack, broker, simulator):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = outage_config(simulator, dev_stack, prefix)
    service = IngestService(config)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        await simulator.wait_stats("binance", lambda s: s.frames_sent > 100, timeout_s=30)

        await stop_broker(broker, service)  # a batch has waited out a request timeout; the restart takes longer
        assert not running.done()
        await asyncio.to_thread(broker.ensure, 180.0)

        simulator.stall("binance")  # what was sent is now fixed: all of it must reach the topic
        sent = {symbol: simulator.sent_trades("binance", symbol) for symbol in SYMBOLS}
        await until(lambda: all_published(config, prefix, sent), "every trade sent on the topic", timeout_s=60)
        stop.set()
        await asyncio.wait_for(running, 30)  # a graceful stop: no error
    finally:
        if not running.done():
            running.cancel()

    assert simulator.stats("binance").sessions_opened == 1  # no reconnect: nothing lost upstream either
    by_symbol = await trades_by_symbol(config, prefix)
    for symbol, trades in by_symbol.items():
        ids = [int(trade.trade_id) for trade in trades]
        assert len(ids) == sent[symbol].count == len(set(ids)), symbol  # none lost, none twice
        assert ids == sorted(ids), symbol  # in order within the partition


async def test_sigterm_while_the_broker_is_away_ends_ingest_within_its_bounds(dev_stack, broker, simulator, caplog):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config = outage_config(simulator, dev_stack, prefix)
    service = IngestService(config)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        await simulator.wait_stats("binance", lambda s: s.frames_sent > 100, timeout_s=30)
        await stop_broker(broker, service)

        started = time.monotonic()
        stop.set()
        # The shutdown timeout for the queue, one request timeout for the publisher, and the sockets' closing.
        bound_s = config.ingest.shutdown_timeout_s + 2 * REQUEST_TIMEOUT_MS / 1000 + 10
        with caplog.at_level(logging.ERROR), pytest.raises(BusError, match="did not"):
            await asyncio.wait_for(running, bound_s)
        assert time.monotonic() - started < bound_s
    finally:
        if not running.done():
            running.cancel()
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert lost and all(getattr(r, "dropped", None) or getattr(r, "undelivered", None) for r in lost), lost


async def trades_by_symbol(config: Config, prefix: str) -> dict[str, list[Trade]]:
    """Each symbol's trades in the order of the topic (a symbol is on one partition)."""
    deliveries = await open_bus(config.bus).read_topic(prefix + Topics.TRADES)
    decode = BatchDecoder(Trade).decode
    by_symbol: dict[str, list[Trade]] = {symbol: [] for symbol in SYMBOLS}
    for delivery in deliveries:  # sorted by partition, then offset
        for trade in decode(delivery.value):
            by_symbol[trade.symbol].append(trade)
    return by_symbol


async def all_published(config: Config, prefix: str, sent) -> bool:  # type: ignore[no-untyped-def]
    by_symbol = await trades_by_symbol(config, prefix)
    return all(len(by_symbol[symbol]) >= sent[symbol].count for symbol in SYMBOLS)
