"""The live ticker on NATS JetStream: the latest trade and best bid/ask of every instrument, held in memory by
every API instance, fed by JetStream followers (the state and its update rule are ``ticker_state.py``'s, shared
with the Kafka ticker).

Each instance follows ``market.trades`` and ``market.quotes`` (with ``bus.topic_prefix``) on its own: one
ephemeral pull consumer per stream that acks nothing, created with ``DeliverPolicy.LAST_PER_SUBJECT``. Subjects
are ``{topic}.{exchange}.{symbol}`` (``bus/nats.py``), so at start the consumer delivers the latest record of
every instrument, then every record published from then on. The instance is recovered (``/readyz``) once both
consumers have delivered what was pending when they were created (JetStream's ``num_pending`` reached 0): it then
answers for every instrument the streams hold, a quiet one included, as long as the stream keeps its last record
(``bus.nats.max_age_s``). Every instance holds all instruments; instances are stateless replicas.

Compared with the Kafka ticker (a Faust ``GlobalTable`` written by the instance that owns an instrument's
partition, read from its changelog by all): no changelog and no consumer group, since the streams themselves keep
the latest record per subject; in exchange each instance decodes the whole trade and quote flow, not a share of it.

A consumer the server has dropped (it forgets one not pulled from for ``INACTIVE_S``, e.g. across a long
disconnection or a server restart) shows as a failed or empty fetch, or as a missing consumer when asked after
``IDLE_CHECK_S`` without a record; it is created again (``LAST_PER_SUBJECT`` once more) after a backoff. The
states are kept meanwhile, and records delivered a second time change nothing: "latest" is by exchange time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from market_ingestor.api.ticker_state import TickerState, TickerUpdates
from market_ingestor.bus.nats import connect_client, stream_name
from market_ingestor.bus.topics import Topics
from market_ingestor.config import Config
from market_ingestor.errors import BusClosedError, BusError
from market_ingestor.retry import RetryPolicy

log = logging.getLogger(__name__)

FETCH_RECORDS = 128  # records per pull (each up to bus.batch.max_bytes, 256 KiB): held until applied
FETCH_WAIT_S = 1.0  # float-ok: how long a pull waits for a first record
INACTIVE_S = 30.0  # float-ok: the server forgets a consumer not pulled from for this long
IDLE_CHECK_S = 5.0  # float-ok: without a record for this long, ask whether the consumer still exists
HEALTHY_S = 60.0  # float-ok: a follower that ran this long failed anew: its backoff starts over
DELETE_TIMEOUT_S = 1.0  # float-ok: at stop, how long to wait for the server to drop a consumer


class NatsTicker:
    """A :class:`~market_ingestor.api.ticker_state.TickerView` fed by JetStream; see the module docstring.

    :meth:`start` connects (raises :class:`BusError` if NATS is not there), :meth:`run` follows until
    cancelled, :meth:`stop` drops the consumers and closes the connection."""

    def __init__(self, config: Config) -> None:
        prefix = config.bus.topic_prefix
        self.nats = config.bus.nats
        self.topics = (prefix + Topics.TRADES, prefix + Topics.QUOTES)
        self.states: dict[str, TickerState] = {}
        self.updates = TickerUpdates()
        self.caught_up = asyncio.Event()  # set once both streams' pending records are applied
        self._streams_caught_up: set[str] = set()
        self.consumers: dict[str, str] = {}  # topic -> the name of its consumer on the server now
        self._client: NatsClient | None = None

    # --- the view ----------------------------------------------------------------------------------------------

    @property
    def recovered(self) -> bool:
        return self.caught_up.is_set()

    def get(self, key: str) -> TickerState | None:
        return self.states.get(key)

    def instruments(self) -> Iterable[str]:
        return list(self.states)

    def apply(self, values: Iterable[bytes]) -> None:
        """Record values of the trades and quotes topics, each an array of events, in order."""
        self.states.update(self.updates.fold(values, self.states.get))

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = await connect_client(self.nats)

    async def run(self) -> None:
        """Follows both streams until cancelled; a follower that fails is started again after a backoff."""
        async with asyncio.TaskGroup() as group:
            for topic in self.topics:
                group.create_task(self._supervise(topic), name=f"ticker:{topic}")

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        js = client.jetstream()
        for topic, name in self.consumers.items():  # else they linger on the server for INACTIVE_S
            with contextlib.suppress(NatsError, TimeoutError):
                await asyncio.wait_for(js.delete_consumer(stream_name(topic), name), DELETE_TIMEOUT_S)
        self.consumers.clear()
        await client.close()

    def _js(self) -> JetStreamContext:
        if self._client is None:
            raise BusClosedError("the NATS ticker is not started")
        return self._client.jetstream()

    # --- following ---------------------------------------------------------------------------------------------

    async def _supervise(self, topic: str) -> None:
        backoff = RetryPolicy(initial_s=1.0, max_s=30.0, jitter=True).retries(f"ticker follower of {topic}")
        while True:
            started = time.monotonic()
            try:
                await self._follow(topic)
            except (BusError, NatsError, TimeoutError) as exc:
                log.warning("ticker follower failed; following again", extra={"topic": topic, "reason": repr(exc)})
            if time.monotonic() - started > HEALTHY_S:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay_s())

    async def _follow(self, topic: str) -> None:
        js = self._js()
        consumer = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=INACTIVE_S,
        )
        subscription = await js.pull_subscribe(f"{topic}.>", stream=stream_name(topic), config=consumer)
        try:
            info = await subscription.consumer_info()
            self.consumers[topic] = info.name
            if not info.num_pending:
                self._caught_up_with(topic)
            last_record = time.monotonic()
            while True:
                try:
                    messages = await subscription.fetch(FETCH_RECORDS, timeout=FETCH_WAIT_S)
                except TimeoutError:  # nats-py's fetch timeouts are TimeoutErrors too
                    if time.monotonic() - last_record > IDLE_CHECK_S:
                        await subscription.consumer_info()  # NotFoundError if the server has dropped it
                        last_record = time.monotonic()
                    continue
                if not messages:  # a status instead of records ("409 Consumer Deleted", a late "408"): still there?
                    await subscription.consumer_info()
                    continue
                last_record = time.monotonic()
                self.apply(message.data for message in messages)
                if messages[-1].metadata.num_pending == 0:
                    self._caught_up_with(topic)
        finally:
            with contextlib.suppress(NatsError):
                await subscription.unsubscribe()

    def _caught_up_with(self, topic: str) -> None:
        if topic in self._streams_caught_up:
            return
        self._streams_caught_up.add(topic)
        if not self.caught_up.is_set() and self._streams_caught_up.issuperset(self.topics):
            self.caught_up.set()
            log.info("ticker caught up with the streams", extra={"instruments": len(self.states)})
