"""The ingest service: configured connectors -> one bounded queue -> the bus, steered by the control topic.

Shutdown order (SIGINT/SIGTERM set ``stop``): connectors close their sockets (no new intake), the queue is
drained into the publisher, the publisher flushes (every event acknowledged by the broker), the capture file
is closed. The queue is bounded: when the bus is slower than the exchanges, connectors wait on ``put`` and
stop reading their sockets, which pushes back to TCP instead of growing memory.

A bus that is away (a Kafka broker or the NATS server restarting) holds the publisher, then the queue, then the
connectors: nothing is dropped, and all of it is published once the bus is back. A shutdown meanwhile is bounded:
the connectors and the queue get ``ingest.shutdown_timeout_s``, the publisher its own flush timeout (Kafka:
``request_timeout_ms``, NATS: ``ack_timeout_s``); the events still unsent then are lost, their count logged as an
error, and ingest exits with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from market_ingestor.bus import PIPELINE_TOPICS, Bus, Publisher, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics, prefixed, topic_of
from market_ingestor.config import Config, ExchangeConfig
from market_ingestor.errors import MarketIngestorError
from market_ingestor.ingestor import metrics
from market_ingestor.ingestor.capture import CaptureWriter
from market_ingestor.ingestor.connection import ConnectionSettings
from market_ingestor.ingestor.connector import ConnectorSettings, ExchangeConnector
from market_ingestor.ingestor.control import ControlState, commands_in, fold, initial_state
from market_ingestor.ingestor.exchanges import Channel, get_spec
from market_ingestor.ingestor.exchanges.base import ExchangeSpec
from market_ingestor.ingestor.rest import RestClient
from market_ingestor.ingestor.status import StatusReporter, instance_name
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, DeadLetter, MarketEvent, Quote, Trade, encode
from market_ingestor.observability import SYMBOLS, Health, MetricsServer
from market_ingestor.retry import RetryPolicy

log = logging.getLogger(__name__)

# An exchange's instrument listing: 2 s doubling to 60 s, forever (its symbols cannot be resolved without it).
LISTING_RETRY = RetryPolicy(2.0, 60.0)

Event = MarketEvent | DeadLetter
_TIMED = (Trade, Quote, BookSnapshot, BookDelta)  # events that carry the exchange's own time
_LATENCY_SAMPLE_EVERY = 8  # observing every event would cost more than the publish itself at 100k/s


class IngestService:
    def __init__(self, config: Config, bus: Bus | None = None) -> None:
        self.config = config
        self.bus = bus or open_bus(config.bus)
        self.prefix = config.bus.topic_prefix
        # Holds the events of one frame per item; bounded in frames (a frame holds a bounded number of events).
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue(maxsize=config.ingest.queue_size)
        self.connectors: dict[str, ExchangeConnector] = {}
        self.state: ControlState = initial_state(config)
        self.ready = asyncio.Event()  # connectors started (for tests and the demo)
        self.stopping = False
        self._connector_tasks: dict[str, asyncio.Task[None]] = {}
        self._wanted_symbols: dict[str, set[str]] = {}
        self._capture: CaptureWriter | None = None
        self._rest: RestClient | None = None
        self._group: asyncio.TaskGroup | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.ensure_topics(prefixed(PIPELINE_TOPICS, self.prefix))
        publisher = self.bus.publisher()
        await publisher.start()
        if self.config.ingest.capture_path:
            self._capture = CaptureWriter(self.config.ingest.capture_path)
        try:
            async with RestClient(self.config.ingest.rest_timeout_s) as rest, asyncio.TaskGroup() as group:
                self._rest, self._group = rest, group
                publishing = group.create_task(self._publish_loop(publisher), name="ingest-publisher")
                following = group.create_task(self._follow_control(), name="ingest-control")
                await self._apply(self.state)
                reporter = self._status_reporter(publisher)
                reporting = group.create_task(reporter.run(self._connector_states), name="ingest-status")
                self.ready.set()
                await stop.wait()
                self.stopping = True
                log.info("stopping: closing exchange connections")
                following.cancel()
                reporting.cancel()
                try:
                    async with asyncio.timeout(self.config.ingest.shutdown_timeout_s):
                        await self._stop_connectors(list(self._connector_tasks))
                        await self.queue.join()  # everything taken in is handed to the publisher
                except TimeoutError:
                    self._abandon_intake()
                publishing.cancel()
                with contextlib.suppress(TimeoutError):  # a bus that is away: publisher.stop() says what is lost
                    async with asyncio.timeout(self.config.ingest.shutdown_timeout_s):
                        await reporter.report_stopped()
        finally:
            self._group = None
            await publisher.stop()  # flush: every event acknowledged by the broker, or an error
            if self._capture is not None:
                self._capture.close()
        log.info("stopped")

    def health(self) -> Health:
        """``/healthz``: healthy from the connectors' start until shutdown; each exchange's connections are
        reported (an exchange being unreachable is its problem, not a reason to restart ingest)."""
        exchanges = {
            name: {
                "symbols": len(connector.symbols),
                "connections": len(connector.connections),
                "connected": sum(connection.connected.is_set() for connection in connector.connections),
            }
            for name, connector in sorted(self.connectors.items())
        }
        state = "stopping" if self.stopping else "running" if self.ready.is_set() else "starting"
        return Health(state == "running", {"state": state, "queued": self.queue.qsize(), "exchanges": exchanges})

    def _abandon_intake(self) -> None:
        """Shutdown with a bus that does not take events: the connectors (waiting to put theirs, one frame's worth
        per connection) are cancelled and what the queue holds is dropped, counted in the log."""
        for task in self._connector_tasks.values():
            task.cancel()
        self._connector_tasks.clear()
        dropped = 0
        while not self.queue.empty():
            dropped += len(self.queue.get_nowait())
            self.queue.task_done()
        log.error(
            "stopping: the bus did not take the queued events in time; lost",
            extra={"dropped": dropped, "shutdown_timeout_s": self.config.ingest.shutdown_timeout_s},
        )

    # --- publishing ------------------------------------------------------------------------------------------

    async def put(self, events: list[Event]) -> None:
        await self.queue.put(events)

    async def _publish_loop(self, publisher: Publisher) -> None:
        queue = self.queue
        physical = {topic: self.prefix + topic for topic in Topics.ALL}
        published = metrics.PUBLISHED.counts
        topic_labels = {topic: (topic,) for topic in Topics.ALL}
        count = 0
        while True:
            events = await queue.get()
            try:
                for event in events:
                    topic = topic_of(event)
                    await publisher.publish(physical[topic], bus_key(event), encode(event), event_id(event))
                    published[topic_labels[topic]] += 1
                    count += 1
                    if count % _LATENCY_SAMPLE_EVERY == 0 and isinstance(event, _TIMED):
                        latency_s = (time.time_ns() - event.ts) / 1e9  # float-ok: a latency metric, not data
                        metrics.INGEST_LATENCY.labels(event.exchange).observe(latency_s)
            finally:
                queue.task_done()
            metrics.QUEUE_DEPTH.set(queue.qsize())

    # --- status (the control panel) ---------------------------------------------------------------------------

    def _status_reporter(self, publisher: Publisher) -> StatusReporter:
        ingest = self.config.ingest
        topic = self.prefix + Topics.STATUS
        return StatusReporter(publisher, topic, instance_name(ingest.instance), ingest.status_interval_s)

    def _connector_states(self) -> dict[str, ExchangeConnector | None]:
        return {name: self.connectors.get(name) for name in self._connector_tasks}

    # --- control ---------------------------------------------------------------------------------------------

    async def _follow_control(self) -> None:
        follower = self.bus.follower([self.prefix + Topics.CONTROL])
        await follower.start()
        try:
            while True:
                commands = commands_in(await follower.fetch(max_records=500, timeout_s=5.0))
                if commands:
                    await self._apply(fold(self.state, commands))
        finally:
            await follower.stop()

    async def _apply(self, state: ControlState) -> None:
        """Brings the running connectors in line with ``state``."""
        self.state = state
        wanted = state.subscriptions()
        gone = [name for name in self._connector_tasks if name not in wanted]
        await self._stop_connectors(gone)
        for name, symbols in wanted.items():
            self._wanted_symbols[name] = set(symbols)
            if name in self.connectors:
                await self.connectors[name].set_symbols(set(symbols))
            elif name not in self._connector_tasks:
                assert self._group is not None
                self._connector_tasks[name] = self._group.create_task(self._run_connector(name), name=f"ingest-{name}")

    async def _run_connector(self, name: str) -> None:
        """Loads the exchange's listing (retrying while it is unreachable), then runs its connector."""
        assert self._rest is not None
        try:
            spec = get_spec(name)
        except MarketIngestorError as exc:
            log.error("exchange refused", extra={"exchange": name, "error": str(exc)})
            return
        settings = self._settings(spec, self.config.exchanges.get(name, ExchangeConfig()))
        registry = await self._registry(spec, settings.rest_url)
        tap = self._capture.write if self._capture is not None else None
        connector = ExchangeConnector(spec, settings, registry, self._rest, self.put, tap)
        self.connectors[name] = connector
        symbols = self._wanted_symbols.get(name, set())
        log.info("connector started", extra={"exchange": name, "symbols": sorted(symbols)})
        await connector.run(symbols)

    async def _stop_connectors(self, names: list[str]) -> None:
        """Stops them side by side (each closes its sockets) and waits for them all."""
        stopping = {name: self._connector_tasks[name] for name in names}
        for name, task in stopping.items():
            connector = self.connectors.pop(name, None)
            if connector is None:
                task.cancel()  # still waiting for its instrument listing
            else:
                await connector.stop()
        if stopping:
            # Not `await task` under suppress(CancelledError): that would also swallow a cancellation of this
            # coroutine (the shutdown timeout). A failure of a task is the TaskGroup's to raise.
            await asyncio.wait(stopping.values())
        for name in stopping:
            del self._connector_tasks[name]
            log.info("connector stopped", extra={"exchange": name})

    def _settings(self, spec: ExchangeSpec, exchange: ExchangeConfig) -> ConnectorSettings:
        ingest = self.config.ingest
        return ConnectorSettings(
            ws_url=exchange.ws_url or spec.ws_url,
            rest_url=(exchange.rest_url or spec.rest_url).rstrip("/"),
            channels=tuple(Channel(channel) for channel in ingest.channels if Channel(channel) in spec.channels),
            connection=ConnectionSettings(
                read_timeout_s=ingest.read_timeout_s,
                backoff_initial_s=ingest.backoff_initial_s,
                backoff_max_s=ingest.backoff_max_s,
                healthy_after_s=ingest.healthy_after_s,
                ping_interval_s=ingest.ping_interval_s,
                ping_timeout_s=ingest.ping_timeout_s,
            ),
            book_buffer_size=ingest.book_buffer_size,
        )

    async def _registry(self, spec: ExchangeSpec, rest_url: str) -> InstrumentRegistry:
        """The exchange's instrument listing; retried with backoff, since symbols cannot be resolved without it."""
        assert self._rest is not None
        url = rest_url + spec.instruments_path
        retries = LISTING_RETRY.retries(f"{spec.name} instrument listing")
        while True:
            try:
                body, _ = await self._rest.get(url)
                return InstrumentRegistry(spec.parse_instruments(body))
            except MarketIngestorError as exc:
                delay_s = retries.next_delay_s()
                log.warning(
                    "instrument listing failed; retrying",
                    extra={"exchange": spec.name, "url": url, "error": str(exc), "retry_in_s": delay_s},
                )
                await asyncio.sleep(delay_s)


async def run_until_signalled(config: Config) -> None:
    """``market-ingestor ingest``: run until SIGINT or SIGTERM, then shut down gracefully."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        service = IngestService(config)
        async with metrics_server(config, service):
            await service.run(stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def metrics_server(config: Config, service: IngestService) -> MetricsServer:
    """``/metrics`` and ``/healthz`` of ingest on ``ingest.metrics_port``; the configured symbols get their own
    label values first."""
    configured = [(name, symbol) for name, exchange in config.exchanges.items() for symbol in exchange.symbols]
    SYMBOLS.configure(config.metrics.max_symbols, configured)
    for name, exchange in config.exchanges.items():  # the exchange-labelled counters at 0 from the start
        if exchange.enabled:
            for counter in (metrics.RECONNECTS, metrics.BOOK_RESYNCS, metrics.DEAD_LETTERS):
                counter.labels(name)
    return MetricsServer(config.metrics.host, config.ingest.metrics_port, service.health, "ingest.metrics_port")
