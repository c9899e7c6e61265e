"""The sink on NATS JetStream (``bus.kind = "nats"``; Faust only speaks Kafka): the same batches, persister and
writer as the Kafka sink, fed by the bus adapter's durable pull consumer (group ``{streams.app_id}-sink``).

One loop fetches at most a batch at a time and hands the records to their topic's :class:`Batcher`; while a
batch is being written (or retried) the loop waits in ``add_many`` and fetches nothing, so at most two batches
per topic are held. A batch's messages are acknowledged (``Subscriber.commit``) only after its transaction;
messages left unacknowledged longer than ``bus.nats.ack_wait_s`` are redelivered and written again, which the
idempotent writer turns into no change.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

from market_ingestor.bus import PIPELINE_TOPICS, Delivery, Publisher, Subscriber, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.config import Config
from market_ingestor.errors import MarketIngestorError
from market_ingestor.model import DeadLetter, Topics, encode, event_id
from market_ingestor.observability import Health, MetricsServer
from market_ingestor.sinks.batching import Batcher
from market_ingestor.sinks.persist import Backoff, Persister, RowDecoder, Writer, sink_group, sink_topics

log = logging.getLogger(__name__)

_FETCH_WAIT_S = 0.25  # float-ok: how long one fetch waits for the first record


class BusSink:
    def __init__(self, config: Config, writer: Writer, subscriber: Subscriber, publisher: Publisher) -> None:
        self.config = config
        prefix = config.bus.topic_prefix
        self.deadletter_topic = prefix + Topics.DEADLETTER
        self.subscriber = subscriber
        self.publisher = publisher
        settings = config.sink
        backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self.persister = Persister(writer, self.send_dead_letters, backoff)
        self.decoders = {prefix + name: RowDecoder(row_type) for name, row_type in sink_topics(config).items()}
        self.batchers: dict[str, Batcher[Delivery]] = {
            topic: Batcher(self._flusher(topic), settings.batch_size, settings.flush_interval_s)
            for topic in self.decoders
        }
        self.state = "starting"

    def health(self) -> Health:
        return Health(self.state == "running", {"state": self.state, **self.persister.database_state()})

    def _flusher(self, topic: str) -> Callable[[list[Delivery]], Awaitable[None]]:
        async def flush(deliveries: list[Delivery]) -> None:
            await self.persister.persist(self.decoders[topic], topic, [d.value for d in deliveries])
            await self.subscriber.commit(deliveries)

        return flush

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            await self.publisher.publish(self.deadletter_topic, letter.exchange, encode(letter), event_id(letter))
        await self.publisher.flush()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            background = [group.create_task(batcher.run()) for batcher in self.batchers.values()]
            maintenance = self.persister.maintain_every(self.config.sink.maintain_interval_s)
            background.append(group.create_task(maintenance))
            intake = group.create_task(self._intake(stop), name="sink-intake")
            self.state = "running"
            await stop.wait()
            self.state = "stopping"
            try:
                # The intake finishes its fetch (or the write it waits for), then everything buffered is written.
                await asyncio.wait_for(self._finish(intake), self.config.sink.shutdown_timeout_s)
                log.info("sink flushed", extra={"topics": list(self.batchers)})
            except TimeoutError:
                log.warning(
                    "shutdown: buffered records could not be written in time; they stay unacknowledged and will "
                    "be delivered again",
                    extra={"buffered": sum(len(batcher) for batcher in self.batchers.values())},
                )
            for task in background:
                task.cancel()

    async def _intake(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            deliveries = await self.subscriber.fetch(self.config.sink.batch_size, _FETCH_WAIT_S)
            for topic in {delivery.topic for delivery in deliveries}:
                await self.batchers[topic].add_many([d for d in deliveries if d.topic == topic])

    async def _finish(self, intake: asyncio.Task[None]) -> None:
        await intake
        await asyncio.gather(*(batcher.flush() for batcher in self.batchers.values()))


async def run_bus_sink(config: Config, stop: asyncio.Event | None = None) -> None:
    """``market-ingestor sink`` through the bus adapter (for NATS): until SIGINT/SIGTERM (or ``stop``), then flush
    and acknowledge."""
    from market_ingestor.sinks.writer import RowWriter

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    bus = open_bus(config.bus)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix))
    topics = [config.bus.topic_prefix + name for name in sink_topics(config)]
    subscriber = bus.subscriber(topics, sink_group(config))
    publisher = bus.publisher()
    sink = BusSink(config, RowWriter(config.database.url, config.storage), subscriber, publisher)
    server = MetricsServer(config.metrics.host, config.sink.metrics_port, sink.health, "sink.metrics_port")
    try:
        await server.start()
        await publisher.start()
        await subscriber.start()
        await sink.run(stop)
    except ExceptionGroup as group:  # from the task group: report our error (e.g. the bus went away) plainly
        ours = [error for error in group.exceptions if isinstance(error, MarketIngestorError)]
        if ours:
            raise ours[0] from group
        raise
    finally:
        await subscriber.stop()
        await publisher.stop()
        await sink.persister.close()
        await server.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)
