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
import logging
import re
from collections.abc import Sequence

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from market_ingestor.bus.base import Delivery
from market_ingestor.bus.topics import PIPELINE_TOPICS, TopicSpec
from market_ingestor.config import NatsConfig
from market_ingestor.errors import BusClosedError, BusError

log = logging.getLogger(__name__)

_SUBJECT_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def stream_name(topic: str) -> str:
    """``market.trades`` -> ``MARKET_TRADES`` (stream names may not contain dots)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", topic).upper()


def subject_for(topic: str, key: str) -> str:
    if not _SUBJECT_TOKEN_RE.match(key):
        raise BusError(f"key {key!r} cannot be a NATS subject: use letters, digits, '-', '_' and dots")
    return f"{topic}.{key}"


async def _connect(config: NatsConfig) -> NatsClient:
    # Once connected, reconnect forever; but a server that is not there at start is an error, reported within
    # connect_timeout_s (nats-py would otherwise retry the first connect as long as it retries reconnects).
    try:
        return await asyncio.wait_for(
            nats.connect(config.url, connect_timeout=config.connect_timeout_s, max_reconnect_attempts=-1),
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

    def __init__(self, config: NatsConfig) -> None:
        self.config = config

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
        client = await _connect(self.config)
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
        client = await _connect(self.config)
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
        return NatsPublisher(self.config)

    def subscriber(self, topics: Sequence[str], group: str) -> NatsSubscriber:
        return NatsSubscriber(self.config, topics, group)


class NatsPublisher:
    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self._client: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._failure: BaseException | None = None

    async def start(self) -> None:
        self._client = await _connect(self.config)
        self._js = self._client.jetstream(publish_async_max_pending=self.config.max_pending_publishes)

    async def stop(self) -> None:
        if self._client is None:
            return
        try:
            await self.flush()
        finally:
            await self._client.close()
            self._client = self._js = None

    async def publish(self, topic: str, key: str, value: bytes, msg_id: str | None = None) -> None:
        if self._js is None:
            raise BusClosedError("NATS publisher is not started")
        self._raise_failure()
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        try:
            # Waits while max_pending_publishes are unacknowledged: the backpressure point.
            future = await self._js.publish_async(subject_for(topic, key), value, headers=headers)
        except NatsError as exc:
            raise BusError(f"NATS publish to {topic} failed: {exc!r}") from exc
        future.add_done_callback(self._acked)

    def _acked(self, future: asyncio.Future[object]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise BusError(f"JetStream rejected a publish: {self._failure!r}") from self._failure

    async def flush(self) -> None:
        if self._js is None:
            raise BusClosedError("NATS publisher is not started")
        await self._js.publish_async_completed()
        self._raise_failure()


def _durable_name(group: str, topic: str) -> str:
    return stream_name(f"{group}.{topic}")


class NatsSubscriber:
    def __init__(self, config: NatsConfig, topics: Sequence[str], group: str) -> None:
        self.config = config
        self.topics = tuple(topics)
        self.group = group
        self._client: NatsClient | None = None
        self._subscriptions: list[tuple[str, JetStreamContext.PullSubscription]] = []
        self._next = 0

    async def start(self) -> None:
        self._client = await _connect(self.config)
        js = self._client.jetstream()
        try:
            for topic in self.topics:
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
            except NatsError as exc:
                raise BusError(f"NATS fetch on {topic} failed: {exc!r}") from exc
            self._next = index + 1
            return [_delivery(topic, message) for message in messages]
        return []

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        try:
            for delivery in deliveries:
                await delivery.handle.ack()
        except NatsError as exc:
            raise BusError(f"NATS ack failed for group {self.group!r}: {exc!r}") from exc
