"""NATS JetStream transport on nats-py.

A logical topic ``market.trades`` is a stream ``MARKET_TRADES`` capturing subjects ``market.trades.>``; a
record with key ``binance.BTCUSDT`` goes to subject ``market.trades.binance.BTCUSDT``, so subjects carry the
same per-instrument ordering as Kafka keys. Publishes carry ``Nats-Msg-Id`` = the event's identity, and
JetStream drops a re-send of the same id inside the stream's duplicate window. Publishing is asynchronous
with a bounded number of unacknowledged messages (nats-py's ``publish_async``); consumers are durable pull
consumers with explicit acks, one durable name per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import (
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError
from prometheus_client import Counter

from market_ingestor.bus.base import Delivery
from market_ingestor.bus.records import RecordBuilder, batch_value, is_batched
from market_ingestor.bus.topics import PIPELINE_TOPICS, TopicSpec
from market_ingestor.config import BatchConfig, NatsConfig
from market_ingestor.errors import BusClosedError, BusError
from market_ingestor.retry import Retries, RetryPolicy

log = logging.getLogger(__name__)

_SUBJECT_CACHE_MAX = 100_000
SERVER_RETRY = RetryPolicy(0.5, 5.0)  # a publisher waiting for NATS, or re-sending what it did not confirm: forever
PUBLISH_RETRIES = Counter(
    "nats_publish_retries_total",
    "Waits of a NATS publisher for a server that is away, and re-sends of windows JetStream did not confirm",
    ["topic"],
)
_OPEN_RECORDS_MAX = 10_000  # subjects with an open batch message, at most
_SUBJECT_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
# The server is away or restarting (the client reconnects by itself; JetStream answers 503 until it has loaded
# its streams and consumers): a consumer waits, as a Kafka consumer does while its broker is away.
_CONNECTION_LOST = (ConnectionReconnectingError, StaleConnectionError, OutboundBufferLimitError, NatsTimeoutError)
_SERVER_AWAY = (
    ServiceUnavailableError,
    NoRespondersError,
    ConnectionReconnectingError,
    StaleConnectionError,
    OutboundBufferLimitError,
    NatsTimeoutError,
)


def stream_name(topic: str) -> str:
    """``market.trades`` -> ``MARKET_TRADES`` (stream names may not contain dots)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", topic).upper()


def subject_for(topic: str, key: str) -> str:
    if not _SUBJECT_TOKEN_RE.match(key):
        raise BusError(f"key {key!r} cannot be a NATS subject: use letters, digits, '-', '_' and dots")
    return f"{topic}.{key}"


async def connect_client(
    config: NatsConfig,
    reconnected: Callable[[], Awaitable[None]] | None = None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    # Once connected, reconnect forever; but a server that is not there at start is an error, reported within
    # connect_timeout_s (nats-py would otherwise retry the first connect as long as it retries reconnects).
    options: dict[str, Any] = {"reconnected_cb": reconnected} if reconnected else {}
    if disconnected:
        options["disconnected_cb"] = disconnected
    try:
        return await asyncio.wait_for(
            nats.connect(config.url, connect_timeout=config.connect_timeout_s, max_reconnect_attempts=-1, **options),
            timeout=config.connect_timeout_s,
        )
    except (TimeoutError, NatsError, OSError) as exc:
        raise BusError(f"cannot connect to NATS at {config.url} within {config.connect_timeout_s}s: {exc!r}") from exc


def _delivery(topic: str, message: Msg) -> Delivery:
    metadata = message.metadata
    return Delivery(
        topic=topic,
        key=message.subject[len(topic) + 1 :],
        value=message.data,
        partition=0,
        position=metadata.sequence.stream,
        redelivered=metadata.num_delivered > 1,
        handle=message,
    )


class NatsBus:
    deduplicates_resends = True

    def __init__(self, config: NatsConfig, batch: BatchConfig | None = None) -> None:
        self.config = config
        self.batch = batch or BatchConfig()

    def stream_config(self, spec: TopicSpec) -> StreamConfig:
        return StreamConfig(
            name=stream_name(spec.name),
            subjects=[f"{spec.name}.>"],
            storage=StorageType.FILE if self.config.storage == "file" else StorageType.MEMORY,
            num_replicas=self.config.replicas,
            max_age=float(spec.retention_s if spec.retention_s else self.config.max_age_s),
            duplicate_window=float(self.config.duplicate_window_s),
            # The compacted-topic equivalent: keep only the latest message per subject (= per key).
            max_msgs_per_subject=1 if spec.compacted else -1,
        )

    async def ensure_topics(self, topics: Sequence[TopicSpec] = PIPELINE_TOPICS) -> None:
        client = await connect_client(self.config)
        try:
            js = client.jetstream()
            for spec in topics:
                config = self.stream_config(spec)
                try:
                    await js.stream_info(config.name or "")
                    await js.update_stream(config)
                except NotFoundError:
                    await js.add_stream(config)
                    log.info("created stream", extra={"stream": config.name, "subjects": config.subjects})
        except NatsError as exc:
            raise BusError(f"cannot create JetStream streams on {self.config.url}: {exc!r}") from exc
        finally:
            await client.close()

    async def read_topic(self, topic: str) -> list[Delivery]:
        client = await connect_client(self.config)
        try:
            js = client.jetstream()
            info = await js.stream_info(stream_name(topic))
            if info.state.messages == 0:
                return []
            # An ephemeral consumer that acks nothing: reading leaves no trace on the server.
            subscription = await js.pull_subscribe(
                f"{topic}.>",
                stream=stream_name(topic),
                config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0),
            )
            records: list[Delivery] = []
            while True:
                messages = await subscription.fetch(batch=1000, timeout=5.0)
                records.extend(_delivery(topic, message) for message in messages)
                if messages[-1].metadata.num_pending == 0:
                    return records
        except NotFoundError:
            return []
        except NatsError as exc:
            raise BusError(f"cannot read JetStream topic {topic!r}: {exc!r}") from exc
        finally:
            await client.close()

    def publisher(self) -> NatsPublisher:
        return NatsPublisher(self.config, self.batch)

    def subscriber(self, topics: Sequence[str], group: str) -> NatsSubscriber:
        return NatsSubscriber(self.config, topics, group)

    def follower(self, topics: Sequence[str], *, tail: int | None = None) -> NatsSubscriber:
        return NatsSubscriber(self.config, topics, None, tail=tail)


class _Window:
    """One topic's published-but-unconfirmed messages, oldest first, kept for a re-send.

    ``sent``/``confirmed`` count messages since start, so a checkpoint's position needs no search."""

    __slots__ = ("checkpoints", "confirmed", "pending", "sent")

    def __init__(self) -> None:
        self.pending: deque[tuple[str, bytes, dict[str, str]]] = deque()
        self.checkpoints: deque[tuple[int, asyncio.Future[PubAck]]] = deque()
        self.sent = 0
        self.confirmed = 0

    def confirm(self, upto: int) -> None:
        while self.confirmed < upto:
            self.pending.popleft()
            self.confirmed += 1


class NatsPublisher:
    """Publishes with JetStream acknowledgements at checkpoints instead of on every message.

    A JetStream ack per message costs more client CPU than the publish itself (an inbox message to parse, a
    future to resolve). The server stores one connection's messages to a stream in order, so an ack for the
    n-th message confirms the ones before it. Every ``ack_every``-th message of a topic therefore asks for an
    ack; the others are sent without one and kept in a bounded window until a later ack confirms them. On
    flush the last message is sent once more with an ack request: its ``Nats-Msg-Id`` makes the server store
    it once and still answer, after all the others. If an ack fails or does not come, the whole window is sent
    again, each message with its own ack: msg ids make the re-send harmless. Messages without a msg id cannot
    be re-sent safely and are each published with an ack.

    While the connection is down, a publish waits for it to come back instead of filling the client's
    reconnect buffer, which on a busy topic overflows within a second and would fail the publish; a window
    JetStream does not confirm is sent again. Both go on under :data:`SERVER_RETRY` (logged, counted in
    ``nats_publish_retries_total``) for as long as NATS is away, as the Kafka publisher does: the caller waits,
    which is the backpressure (ingest's bounded queue fills and its connectors stop reading). Only ``stop``
    bounds the wait, to ``ack_timeout_s``; what is unconfirmed then is logged as lost and raised (BusError).
    """

    def __init__(self, config: NatsConfig, batch: BatchConfig | None = None) -> None:
        self.config = config
        self.batch = batch or BatchConfig()
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._records: dict[str, RecordBuilder] = {}  # open batch messages per subject (hot topics)
        self._record_topic: dict[str, str] = {}
        self._send_lock = asyncio.Lock()  # batch messages of a subject leave in the order they were closed
        self._linger_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._windows: dict[str, _Window] = {}
        self._subjects: dict[tuple[str, str], str] = {}
        self._unwindowed: set[asyncio.Future[PubAck]] = set()  # publishes without a msg id, each acked
        self._reconnected = False
        self._reconnect = asyncio.Event()  # set with _reconnected: wakes a wait for an ack the old connection lost
        self._connected = asyncio.Event()
        self._give_up_at: float | None = None  # float-ok: monotonic time; set by stop()

    async def start(self) -> None:
        self._client = await connect_client(self.config, self._on_reconnect, self._on_disconnect)
        self._connected.set()
        self._js = self._client.jetstream(publish_async_max_pending=self.config.max_pending_publishes)
        self._linger_task = asyncio.create_task(self._linger(), name="nats-publisher-linger")

    async def _on_reconnect(self) -> None:
        # What was written to the old connection after its last answered ack may never have arrived, and an
        # ack on the new connection says nothing about it: the windows are re-sent before anything new.
        self._reconnected = True
        self._reconnect.set()
        self._connected.set()

    async def _on_disconnect(self) -> None:
        self._connected.clear()

    async def _until_connected(self, topic: str = "") -> None:
        """Waits for the connection, forever unless stopping (then at most until ``stop``'s deadline)."""
        retries: Retries | None = None
        while not self._connected.is_set():
            retries = retries or SERVER_RETRY.retries(f"NATS publisher to {self.config.url}")
            delay_s = self._retry_delay_s(retries, f"NATS at {self.config.url} away")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), delay_s)
            if not self._connected.is_set():
                PUBLISH_RETRIES.labels(topic).inc()
                log.warning(
                    "NATS away; publishes wait for it",
                    extra={
                        "url": self.config.url,
                        "topic": topic,
                        "retry": retries.attempt,
                        "unconfirmed": self.unconfirmed(),
                    },
                )

    def _retry_delay_s(self, retries: Retries, what: str) -> float:  # float-ok: a duration
        """The next wait of a retry loop, cut to ``stop``'s deadline; past it, BusError."""
        delay_s = retries.next_delay_s()
        if self._give_up_at is not None:
            delay_s = min(delay_s, self._give_up_at - time.monotonic())
            if delay_s <= 0:
                raise BusError(f"{what} at stop: {self.unconfirmed()} publishes not confirmed")
        return delay_s

    def unconfirmed(self) -> int:
        """Messages published and not yet confirmed by JetStream."""
        return sum(len(window.pending) for window in self._windows.values()) + len(self._unwindowed)

    async def _resend_after_reconnect(self) -> None:
        self._reconnected = False
        self._reconnect.clear()
        for window in list(self._windows.values()):
            if window.pending:
                log.warning("NATS reconnected; re-sending unconfirmed publishes", extra={"count": len(window.pending)})
                await self._resend(window)

    async def stop(self) -> None:
        """Flushes, waiting up to ``ack_timeout_s`` for a server that is away; what it has not confirmed by then
        is lost: logged as an error with the count, and raised (BusError)."""
        if self._client is None:
            return
        self._give_up_at = time.monotonic() + self.config.ack_timeout_s
        try:
            await self.flush()
        finally:
            if self.unconfirmed():
                log.error(
                    "NATS publisher stopped with messages JetStream has not confirmed: lost",
                    extra={"unconfirmed": self.unconfirmed(), "url": self.config.url},
                )
            if self._linger_task is not None:
                self._linger_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._linger_task
                self._linger_task = None
            await self._client.close()
            self._client = self._js = None

    def _live(self) -> tuple[NatsClient, JetStreamContext]:
        if self._client is None or self._js is None:
            raise BusClosedError("NATS publisher is not started")
        return self._client, self._js

    def _subject(self, topic: str, key: str) -> str:
        subject = self._subjects.get((topic, key))
        if subject is None:
            if len(self._subjects) >= _SUBJECT_CACHE_MAX:
                self._subjects.clear()
            subject = self._subjects[(topic, key)] = subject_for(topic, key)
        return subject

    async def publish(self, topic: str, key: str, value: bytes, msg_id: str | None = None) -> None:
        self._live()
        subject = self._subject(topic, key)
        if not is_batched(topic):
            async with self._send_lock:
                await self._send(topic, subject, value, msg_id)
            return
        record = self._records.get(subject)
        if record is None or not record.fits(value):
            if record is not None:
                await self._close_record(subject)
            record = self._records[subject] = RecordBuilder(
                self.batch.max_events, self.batch.max_bytes, time.monotonic()
            )
            self._record_topic[subject] = topic
        record.add(key, value, msg_id)
        if len(self._records) > _OPEN_RECORDS_MAX:  # many quiet subjects: bound what is held between lingers
            await self._close_records()

    async def publish_record(self, topic: str, key: str, values: Sequence[bytes], msg_id: str) -> None:
        """One batch message of already-grouped events with the caller's identity (the NATS stream worker's
        outputs: the group, and so the id, depends on the input only, so a replay is stored once). Events of
        the subject still open in a record go out first; a group beyond the size bounds becomes several
        messages, ``{msg_id}.1``, ``{msg_id}.2``, ..."""
        self._live()
        subject = self._subject(topic, key)
        await self._close_record(subject)
        parts: list[list[bytes]] = [[]]
        record = RecordBuilder(self.batch.max_events, self.batch.max_bytes)
        for value in values:
            if not record.fits(value):
                parts.append([])
                record = RecordBuilder(self.batch.max_events, self.batch.max_bytes)
            record.add(key, value)
            parts[-1].append(value)
        async with self._send_lock:
            for index, part in enumerate(parts):
                if part:
                    await self._send(topic, subject, batch_value(part), msg_id if index == 0 else f"{msg_id}.{index}")

    async def _close_record(self, subject: str) -> None:
        record = self._records.pop(subject, None)
        topic = self._record_topic.pop(subject, None)
        if record is None or topic is None or not record.events:
            return
        async with self._send_lock:
            await self._send(topic, subject, record.value(), record.identity())

    async def _close_records(self, opened_before_s: float | None = None) -> None:
        for subject, record in list(self._records.items()):
            if opened_before_s is None or record.opened_s <= opened_before_s:
                await self._close_record(subject)

    async def _linger(self) -> None:
        interval_s = max(self.batch.linger_ms, 1) / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._close_records(opened_before_s=time.monotonic() - interval_s)
            except BusError as exc:
                self._failure = self._failure or exc

    async def _send(self, topic: str, subject: str, value: bytes, msg_id: str | None) -> None:
        client, js = self._live()
        await self._until_connected(topic)
        if self._reconnected:
            await self._resend_after_reconnect()
        try:
            if msg_id is None:
                future = await self._publish_async(js, subject, value)
                self._unwindowed.add(future)
                future.add_done_callback(self._unwindowed.discard)
                return
            headers = {"Nats-Msg-Id": msg_id}
            window = self._windows.get(topic) or self._windows.setdefault(topic, _Window())
            window.pending.append((subject, value, headers))
            window.sent += 1
            if window.sent % self.config.ack_every == 0:
                window.checkpoints.append((window.sent, await js.publish_async(subject, value, headers=headers)))
                self._reap(window)
            else:
                await client.publish(subject, value, headers=headers)
            if len(window.pending) >= self.config.max_pending_publishes:
                await self._await_oldest_checkpoint(window)  # the backpressure point
        except OutboundBufferLimitError:
            # The connection went down after the check above: the message is in its window, which is sent
            # again, before anything new, once the connection is back.
            await self._until_connected(topic)
        except NatsError as exc:
            raise BusError(f"NATS publish to {topic} failed: {exc!r}") from exc

    async def _publish_async(self, js: JetStreamContext, subject: str, value: bytes) -> asyncio.Future[PubAck]:
        """A publish without a msg id (it cannot be re-sent from a window): after a reconnect if the connection
        goes down under it."""
        try:
            return await js.publish_async(subject, value)
        except OutboundBufferLimitError:
            await self._until_connected()
            return await js.publish_async(subject, value)

    def _reap(self, window: _Window) -> None:
        """Confirms the window up to the newest successful checkpoint that has answered."""
        while window.checkpoints and window.checkpoints[0][1].done():
            upto, future = window.checkpoints.popleft()
            if future.cancelled() or future.exception() is not None:
                raise BusError(f"JetStream did not store a publish: {future.exception()!r}")
            window.confirm(upto)

    async def _await_oldest_checkpoint(self, window: _Window) -> None:
        if not window.checkpoints:
            await self._checkpoint(window)
        future = window.checkpoints[0][1]
        try:
            # An ack asked for on a connection that has gone since never comes: a reconnect ends the wait.
            reconnect = asyncio.ensure_future(self._reconnect.wait())
            either: set[asyncio.Future[Any]] = {future, reconnect}
            try:
                await asyncio.wait(either, timeout=self.config.ack_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                reconnect.cancel()
            if self._reconnected:
                await self._resend_after_reconnect()  # every window, each message with its own ack
                return
            if not future.done():
                raise TimeoutError(f"no JetStream ack within {self.config.ack_timeout_s} s")
            self._reap(window)
        except (TimeoutError, NatsError, BusError) as exc:
            log.warning("JetStream ack failed; re-sending the unconfirmed window", extra={"error": repr(exc)})
            await self._resend(window)

    async def _checkpoint(self, window: _Window) -> None:
        """Ask for an ack after the newest message of the window by sending it again (deduplicated)."""
        _, js = self._live()
        await self._until_connected()
        subject, value, headers = window.pending[-1]
        window.checkpoints.append((window.sent, await js.publish_async(subject, value, headers=headers)))

    async def _resend(self, window: _Window) -> None:
        """Sends the window again, each message with an ack, until JetStream confirms it (see the class)."""
        retries: Retries | None = None
        refused_since: float | None = None  # float-ok: monotonic time of the first answer that was not a timeout
        while True:
            try:
                await self._resend_once(window)
                return
            except BusError as exc:
                if not isinstance(exc.__cause__, (TimeoutError, *_CONNECTION_LOST)):
                    # JetStream answered (no stream, an API error): during a restart for a few seconds, for a
                    # stream that does not exist for ever, so this is bounded to ack_timeout_s.
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since > self.config.ack_timeout_s:
                        raise
                retries = retries or SERVER_RETRY.retries("NATS publisher re-send")
                delay_s = self._retry_delay_s(retries, f"JetStream did not confirm a re-send ({exc})")
                topic = next((name for name, held in self._windows.items() if held is window), "")
                PUBLISH_RETRIES.labels(topic).inc()
                log.warning(
                    "JetStream did not confirm a re-sent window; retrying",
                    extra={"error": str(exc), "count": len(window.pending), "retry": retries.attempt},
                )
                await asyncio.sleep(delay_s)

    async def _resend_once(self, window: _Window) -> None:
        _, js = self._live()
        await self._until_connected()
        # Acks that may never come hold a slot of nats-py's bounded pending set until cancelled.
        for _, future in window.checkpoints:
            future.cancel()
        window.checkpoints.clear()
        # Other tasks may add to the window while this waits (a flush does not hold the send lock): only what
        # is re-sent here is confirmed by these acks, and the window is not iterated across an await.
        resent = list(window.pending)
        upto = window.confirmed + len(resent)
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for subject, data, headers in resent:
                futures.append(await js.publish_async(subject, data, headers=headers))
            await asyncio.wait_for(asyncio.gather(*futures), self.config.ack_timeout_s)
        except (TimeoutError, NatsError) as exc:
            raise BusError(f"JetStream did not confirm {len(resent)} re-sent messages: {exc!r}") from exc
        finally:
            for future in futures:  # an ack that never comes would hold a slot of nats-py's pending set
                if not future.done():
                    future.cancel()
        window.confirm(upto)

    async def flush(self) -> None:
        self._live()
        await self._close_records()
        if self._failure is not None:
            raise BusError(f"a NATS publish failed: {self._failure!r}") from self._failure
        if self._reconnected:
            await self._resend_after_reconnect()
        for window in list(self._windows.values()):  # other tasks may open a topic meanwhile
            if window.pending and (not window.checkpoints or window.checkpoints[-1][0] < window.sent):
                await self._checkpoint(window)
            while window.checkpoints:
                await self._await_oldest_checkpoint(window)
        if self._unwindowed:
            try:
                await asyncio.wait_for(asyncio.gather(*self._unwindowed), self.config.ack_timeout_s)
            except (TimeoutError, NatsError) as exc:
                raise BusError(f"JetStream did not store every publish without a msg id: {exc!r}") from exc


def _durable_name(group: str, topic: str) -> str:
    return stream_name(f"{group}.{topic}")


durable_name = _durable_name  # the consumer of ``group`` on ``topic``, e.g. for the control panel's lag


class NatsSubscriber:
    def __init__(
        self, config: NatsConfig, topics: Sequence[str], group: str | None, *, tail: int | None = None
    ) -> None:
        self.config = config
        self.topics = tuple(topics)
        self.group = group
        self.tail = tail
        self._client: NatsClient | None = None
        self._subscriptions: list[tuple[str, JetStreamContext.PullSubscription]] = []
        self._next = 0

    async def start(self) -> None:
        self._client = await connect_client(self.config)
        js = self._client.jetstream()
        try:
            for topic in self.topics:
                if self.group is None:
                    # A follower: an ephemeral consumer the server forgets once this process is gone.
                    consumer = ConsumerConfig(
                        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
                    )
                    if self.tail is not None:
                        # The start sequence is fixed when the consumer is created, before start() returns.
                        state = (await js.stream_info(stream_name(topic))).state
                        consumer.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                        consumer.opt_start_seq = max(state.first_seq, state.last_seq + 1 - self.tail, 1)
                else:
                    consumer = ConsumerConfig(
                        durable_name=_durable_name(self.group, topic),
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=self.config.ack_wait_s,
                        deliver_policy=DeliverPolicy.ALL,
                        max_ack_pending=65_536,
                    )
                subscription = await js.pull_subscribe(
                    f"{topic}.>",
                    durable=consumer.durable_name,
                    stream=stream_name(topic),
                    config=consumer,
                )
                self._subscriptions.append((topic, subscription))
        except NatsError as exc:
            await self.stop()
            raise BusError(f"cannot subscribe group {self.group!r} to {self.topics}: {exc!r}") from exc

    async def stop(self) -> None:
        if self._client is not None:
            # Unsubscribing leaves the durable consumer (and its unacked messages) on the server.
            await self._client.close()
            self._client = None
            self._subscriptions = []

    async def fetch(self, max_records: int = 1000, timeout_s: float = 1.0) -> list[Delivery]:
        if self._client is None:
            raise BusClosedError("NATS subscriber is not started")
        # Round-robin over topics so a busy topic cannot starve the others.
        for attempt in range(len(self._subscriptions)):
            index = (self._next + attempt) % len(self._subscriptions)
            topic, subscription = self._subscriptions[index]
            wait_s = timeout_s if attempt == len(self._subscriptions) - 1 else 0.001
            try:
                messages = await subscription.fetch(batch=max_records, timeout=wait_s)
            except (TimeoutError, NatsTimeoutError):
                continue
            except _SERVER_AWAY as exc:
                log.warning("NATS unavailable; fetching again", extra={"topic": topic, "error": repr(exc)})
                await asyncio.sleep(wait_s)  # what the fetch would have waited: no busy loop while it is away
                continue
            except NatsError as exc:
                raise BusError(f"NATS fetch on {topic} failed: {exc!r}") from exc
            self._next = index + 1
            return [_delivery(topic, message) for message in messages]
        return []

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        if self._client is None:
            raise BusClosedError("NATS subscriber is not started")
        if self.group is None:
            return  # a follower's consumer acks nothing
        try:
            for delivery in deliveries:
                await delivery.handle.ack()
            # ack() only queues the ack in the client's buffer; a process that dies right after commit() would
            # lose it. The PING/PONG round trip returns once the server has read everything sent before it.
            await self._client.flush(timeout=max(1, round(self.config.ack_timeout_s)))
        except _SERVER_AWAY as exc:
            # The acks wait in the client's buffer for the reconnect; any that never arrive make JetStream deliver
            # their records again after ack_wait_s: at least once, as a Kafka commit cut off by a rebalance.
            log.warning(
                "NATS unavailable; acks not confirmed (unconfirmed records come again)",
                extra={"group": self.group, "records": len(deliveries), "error": repr(exc)},
            )
        except NatsError as exc:
            raise BusError(f"NATS ack failed for group {self.group!r}: {exc!r}") from exc

    async def lag(self) -> dict[tuple[str, int], int]:
        """Messages of each topic not delivered to this consumer yet (JetStream's ``num_pending``), as partition 0."""
        if self._client is None:
            raise BusClosedError("NATS subscriber is not started")
        lag: dict[tuple[str, int], int] = {}
        try:
            for topic, subscription in self._subscriptions:
                lag[(topic, 0)] = (await subscription.consumer_info()).num_pending or 0
        except NatsError as exc:
            raise BusError(f"cannot read the lag of {self.topics}: {exc!r}") from exc
        return lag
