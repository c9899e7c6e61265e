"""The sink service (``market-ingestor sink``): the hot topics -> PostgreSQL/TimescaleDB, on Kafka and on NATS alike.

One implementation for both buses: the bus adapter's group consumer (``{streams.app_id}-sink``; Kafka:
aiokafka, ``read_committed``, explicit commits; NATS: a durable pull consumer with explicit acks) feeds one
:class:`~market_ingestor.sinks.batching.Batcher` per topic, and each batch is written in one transaction by the
:class:`~market_ingestor.sinks.persist.Persister` before its records are committed.

- A bus record holds many rows (``bus/records.py``). The intake decodes each record as it arrives (the whole
  array at once; a record that fails is read event by event so its good events are stored and its bad ones
  dead-lettered) and hands it to its topic's batcher weighed by its rows: a batch holds up to ``sink.batch_size``
  rows and never splits a record, so a record is committed only once all its rows are in the database.
- Up to ``sink.writes_in_flight`` batches of a topic are written at the same time (the database stores one
  while this process encodes the next; trades and quotes are insert-only, klines and indicator values upserts
  whose result does not depend on the order), and their records are committed one batch at a time, in order.
  While those are being written (or retried) and the next batch is full, the intake waits and fetches nothing:
  a database outage stops consumption instead of filling memory.
- Commits follow the transactions. After a Kafka rebalance, records of a partition that moved are not committed
  by this member (``KafkaSubscriber.commit`` leaves them out) and the new owner reads them again; NATS
  redelivers what stays unacknowledged longer than ``bus.nats.ack_wait_s``. The idempotent writer turns such
  re-deliveries into no change, and no offset is ever committed past a record that is not stored.
- SIGINT/SIGTERM: the intake stops fetching, everything buffered is written and committed (within
  ``sink.shutdown_timeout_s``; what is not stays uncommitted and comes again), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from market_ingestor.bus import PIPELINE_TOPICS, Delivery, Publisher, Subscriber, open_bus
from market_ingestor.bus.keys import event_id
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import Config
from market_ingestor.errors import ours_in
from market_ingestor.model import DeadLetter, encode
from market_ingestor.observability import Health, MetricsServer
from market_ingestor.observability.lag import SubscriberLag
from market_ingestor.sinks import metrics
from market_ingestor.sinks.batching import Batcher
from market_ingestor.sinks.persist import (
    Decoded,
    Persister,
    RowDecoder,
    Writer,
    outage_retry,
    sink_group,
    sink_topics,
)

log = logging.getLogger(__name__)

_FETCH_WAIT_S = 0.25  # float-ok: how long one fetch waits for the first record
# Records per fetch: a record holds up to bus.batch.max_events rows, so this bounds what one fetch adds.
_FETCH_RECORDS = 64


@dataclass(frozen=True, slots=True)
class Pending:
    """A consumed record and its decoded rows, waiting for its batch's transaction."""

    delivery: Delivery
    decoded: Decoded


def _rows(pending: Pending) -> int:
    return len(pending.decoded)


class BusSink:
    def __init__(self, config: Config, writer: Writer, subscriber: Subscriber, publisher: Publisher) -> None:
        self.config = config
        prefix = config.bus.topic_prefix
        self.deadletter_topic = prefix + Topics.DEADLETTER
        self.subscriber = subscriber
        self.publisher = publisher
        settings = config.sink
        self.persister = Persister(writer, self.send_dead_letters, outage_retry(settings))
        self.decoders = {prefix + name: RowDecoder(row_type) for name, row_type in sink_topics(config).items()}
        self.batchers: dict[str, Batcher[Pending]] = {
            topic: Batcher(
                self._writer(topic),
                settings.batch_size,
                settings.flush_interval_s,
                _rows,
                commit=self._commit,
                writes_in_flight=settings.writes_in_flight,
            )
            for topic in self.decoders
        }
        self.lag = SubscriberLag(subscriber, sink_group(config), config.metrics.sample_interval_s)
        self.state = "starting"

    def health(self) -> Health:
        return Health(self.state == "running", {"state": self.state, **self.persister.database_state()})

    def _writer(self, topic: str) -> Callable[[list[Pending]], Awaitable[None]]:
        table = self.decoders[topic].table

        async def write(batch: list[Pending]) -> None:
            await self.persister.persist(table, topic, [pending.decoded for pending in batch])

        return write

    async def _commit(self, batch: list[Pending]) -> None:
        await self.subscriber.commit([pending.delivery for pending in batch])

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            await self.publisher.publish(self.deadletter_topic, letter.exchange, encode(letter), event_id(letter))
        await self.publisher.flush()  # stored on the bus before the batch's records are committed

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            background = [group.create_task(batcher.run()) for batcher in self.batchers.values()]
            maintenance = self.persister.maintain_every(self.config.sink.maintain_interval_s)
            background.append(group.create_task(maintenance))
            background.append(group.create_task(self.lag.run(), name="sink-lag"))
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
                    "shutdown: buffered records could not be written in time; they stay uncommitted and will "
                    "be delivered again",
                    extra={"buffered_rows": sum(len(batcher) for batcher in self.batchers.values())},
                )
            for task in background:
                task.cancel()

    async def _intake(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            deliveries = await self.subscriber.fetch(_FETCH_RECORDS, _FETCH_WAIT_S)
            now_ns = time.time_ns()
            for delivery in deliveries:
                decoded = self.decoders[delivery.topic].decode(delivery.value, now_ns)
                await self.batchers[delivery.topic].add(Pending(delivery, decoded))

    async def _finish(self, intake: asyncio.Task[None]) -> None:
        await intake
        await asyncio.gather(*(batcher.flush() for batcher in self.batchers.values()))


async def run_sink(config: Config, stop: asyncio.Event | None = None) -> None:
    """``market-ingestor sink``: until SIGINT/SIGTERM (or ``stop``), then flush and commit."""
    from market_ingestor.sinks.writer import RowWriter

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    bus = open_bus(config.bus)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix))
    topics = [config.bus.topic_prefix + name for name in sink_topics(config)]
    for topic in topics:  # at 0 from the start: the dashboard's panels show "none yet", not "no data"
        metrics.DEAD_LETTERS.labels(topic)
        metrics.RETRIES.labels(topic)
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
        ours = ours_in(group)
        if ours is not None:
            raise ours from group
        raise
    finally:
        await subscriber.stop()
        await publisher.stop()
        await sink.persister.close()
        await server.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)
