"""The Kafka sink: Faust agents, one per topic, in their own app and consumer group (``{streams.app_id}-sink``), so
a slow database holds back the sink alone, never the kline worker. Each agent buffers its topic's records in a
:class:`~market_ingestor.sinks.batching.Batcher`; a full or old batch is written in one transaction and only
then are its offsets committed.

How Faust acks and commits (faust-streaming 0.15.3, read in ``streams.py``, ``transport/consumer.py``,
``app/base.py``), and why the sink commits itself:

- An event is *acked* when the stream iterator moves past it (``Stream.__aiter__``'s ``finally``),
  ``take``/``take_events`` ack a whole buffer in their ``finally`` after the caller's loop body, *also* when the
  body raised or the generator was closed at shutdown, and ``noack_take`` leaves it to ``Stream.ack``.
  ``Consumer.ack`` records the offset; the commit timer (``broker_commit_interval``), ``Consumer.on_task_error``
  (any agent error), the revocation of partitions and the shutdown (``wait_empty``) commit the highest offset
  below the first unacked one.
- Events the stream *skips* are acked without being processed: while flow control is suspended (during a
  rebalance and from the start of the shutdown) and when they were fetched in an older consumer generation. On
  shutdown, a message whose ``put`` into a full stream buffer was pending can still be delivered after the
  buffers are cleared; it is skipped and acked, and if the record before it in its partition was acked, the
  final commit covers it although it was never processed. Faust's gap check (``Consumer._new_offset``) does not
  stop this: it only looks before the lowest acked offset, only when a committed offset is known and non-zero,
  and lets a gap of one through.
- Faust's at-least-once consumer reads ``read_uncommitted``: records of aborted transactions (an exactly-once
  kline worker that crashed) would be stored.

So the sink's topics are declared with ``acks=False``: Faust tracks, acks and commits nothing of them, and a
skipped record is simply not written (its offset is re-read after the next seek). After each batch's transaction
the agent commits ``offset + 1`` of the batch's last record per partition through the consumer
(``Consumer._commit``, the call Faust's own commits end in; it drops partitions no longer assigned). A batch
is flushed on SIGTERM from the ``on_before_shutdown`` signal, which Faust sends after it stopped fetching and
before it stops the agents and the consumer. The consumer is built ``read_committed`` and long-polls briefly
(see :mod:`market_ingestor.streams.faust_app`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.types import TP

from market_ingestor.config import Config
from market_ingestor.model import DeadLetter, Topics, encode
from market_ingestor.observability.consumer import MetricsService, metrics_service
from market_ingestor.sinks.batching import Batcher
from market_ingestor.sinks.persist import Backoff, Persister, Row, RowDecoder, Writer, sink_group, sink_topics
from market_ingestor.streams.faust_app import StreamApp
from market_ingestor.streams.sequence import InputSequence

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT_S = 10.0  # float-ok: a duration


@dataclass(frozen=True, slots=True)
class Record:
    tp: TP
    offset: int
    value: bytes | None


class SinkApp:
    def __init__(self, config: Config, writer: Writer, data_dir: str | Path | None = None) -> None:
        kafka, sink = config.bus.kafka, config.sink
        self.app = StreamApp.on_kafka(
            sink_group(config),
            kafka,
            datadir=str(data_dir or sink.data_dir),
            processing_guarantee="at_least_once",
            consumer_auto_offset_reset="earliest",
            read_committed=True,
        )
        self.settings = sink
        self.persister = Persister(writer, self.send_dead_letters, Backoff(sink.retry_initial_s, sink.retry_max_s))
        prefix = config.bus.topic_prefix
        self.deadletter = self.app.topic(prefix + Topics.DEADLETTER, key_type=bytes, value_type=bytes)
        self.agents = [TopicSink(self, prefix + name, row_type) for name, row_type in sink_topics(config).items()]
        self.app.on_before_shutdown.connect(self.on_shutdown)
        self.app.task(self.maintain)
        self.metrics: MetricsService = metrics_service(
            self.app,
            config.metrics,
            sink.metrics_port,
            "sink.metrics_port",
            [agent.topic_name for agent in self.agents],
            details=self.persister.database_state,
        )

    async def maintain(self) -> None:
        await self.persister.maintain_every(self.settings.maintain_interval_s)

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            await self.deadletter.send(key=letter.exchange.encode(), value=encode(letter))
        await self.app.producer.flush()  # on the topic (acks=all) before the batch's offsets are committed

    async def commit(self, records: list[Record]) -> None:
        offsets: dict[TP, int] = {}
        for record in records:
            offsets[record.tp] = max(offsets.get(record.tp, 0), record.offset + 1)
        consumer: Any = self.app.consumer
        if not await consumer._commit(offsets):
            log.info("offsets not committed (partitions reassigned); they will be delivered again", extra={})

    async def drain(self) -> None:
        await asyncio.gather(*(agent.batcher.flush() for agent in self.agents))

    async def on_shutdown(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(self.drain(), self.settings.shutdown_timeout_s)
            log.info("sink flushed", extra={"topics": [agent.topic_name for agent in self.agents]})
        except TimeoutError:
            log.warning(
                "shutdown: buffered records could not be written in time; they stay uncommitted and will be "
                "delivered again",
                extra={"buffered": sum(len(agent.batcher) for agent in self.agents)},
            )
        try:
            await asyncio.wait_for(self.persister.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("shutdown: the database connections did not close in time", extra={})


class TopicSink:
    """The agent of one topic: records -> batches -> one transaction each -> commit."""

    def __init__(self, sink: SinkApp, topic_name: str, row_type: type[Row]) -> None:
        self.sink = sink
        self.topic_name = topic_name
        self.decoder = RowDecoder(row_type)
        # acks=False: Faust must not commit these offsets; the agent does, after the transaction (module docstring).
        self.topic = sink.app.topic(topic_name, key_type=bytes, value_type=bytes, acks=False)
        self.batcher: Batcher[Record] = Batcher(self.flush, sink.settings.batch_size, sink.settings.flush_interval_s)
        sink.app.agent(self.topic, name=f"sink-{row_type.__name__.lower()}")(self.consume)

    async def consume(self, stream: Any) -> None:
        # In offset order without holes: a record Faust skipped must not be committed past (streams/sequence.py).
        sequence = InputSequence(self.sink.app)
        consumer: Any = self.sink.app.consumer
        async with asyncio.TaskGroup() as group:
            flusher = group.create_task(self.batcher.run(), name=f"{self.topic_name}-flusher")
            async for event in stream.events():
                tp = event.message.tp
                for passed in await sequence.in_order([event], {tp: consumer._committed_offset.get(tp)}):
                    message = passed.message
                    await self.batcher.add(Record(message.tp, message.offset, passed.value))
            flusher.cancel()

    async def flush(self, records: list[Record]) -> None:
        await self.sink.persister.persist(self.decoder, self.topic_name, [record.value for record in records])
        await self.sink.commit(records)
