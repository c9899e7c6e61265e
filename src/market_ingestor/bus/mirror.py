"""The flat mirror: batch records of chosen hot topics -> one keyed record per event on ``{topic}.flat``.

For tools that map one record to one row (Kafka Connect sinks, ClickHouse's Kafka engine, ksqlDB); see
docs/topics.md. It runs as its own process and consumer group (``{streams.app_id}-mirror``), so the stream
worker's hot path never pays for it. At-least-once: a record's offset is committed only after every event of it
is acknowledged on the flat topic; a restart may repeat events, which carry their identity (``Nats-Msg-Id`` on
NATS dedupes them). An event that does not decode goes to the dead-letter topic, counted; the rest go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import msgspec

from market_ingestor.bus import Publisher, Subscriber
from market_ingestor.bus.keys import event_id
from market_ingestor.bus.records import is_batched, split_events
from market_ingestor.bus.topics import TopicSpec
from market_ingestor.errors import ConfigError
from market_ingestor.model import DeadLetter, decode, encode

log = logging.getLogger(__name__)

FLAT_SUFFIX = ".flat"
_FETCH_RECORDS = 200  # batch records per fetch: up to 200 x bus.batch.max_events events held at once
_FETCH_WAIT_S = 0.25  # float-ok: seconds


class _Identity(msgspec.Struct):
    """The fields of any hot-topic event that make its key and identity (the others are skipped)."""

    exchange: str
    symbol: str


def flat_topic(topic: str) -> str:
    return topic + FLAT_SUFFIX


def flat_specs(topics: Sequence[TopicSpec]) -> list[TopicSpec]:
    """The flat topics of ``topics``: the same retention and partition count."""
    for spec in topics:
        if not is_batched(spec.name):
            raise ConfigError(f"{spec.name} is not a batched topic; only the hot topics have a flat mirror")
    return [TopicSpec(flat_topic(spec.name), spec.retention_s, False, spec.partitions) for spec in topics]


_identity = msgspec.json.Decoder(_Identity)


def flatten(value: bytes) -> tuple[list[tuple[str, bytes]], list[tuple[bytes, str]]]:
    """A batch record -> ``(key, event)`` per event, and ``(raw, reason)`` for what is not an event.

    The event's text is passed on unchanged: the exchange's digits stay exactly as they were."""
    try:
        parts = split_events(value)
    except msgspec.MsgspecError as exc:
        return [], [(value, f"not JSON: {exc}")]
    events: list[tuple[str, bytes]] = []
    bad: list[tuple[bytes, str]] = []
    for part in parts:
        try:
            ident = _identity.decode(part)
        except msgspec.MsgspecError as exc:
            bad.append((part, f"not an event of a hot topic: {exc}"))
            continue
        events.append((f"{ident.exchange}.{ident.symbol}", part))
    return events, bad


async def mirror(
    subscriber: Subscriber, publisher: Publisher, deadletter_topic: str, stop: asyncio.Event, *, with_ids: bool
) -> int:
    """Copies until ``stop`` is set; returns the events copied. ``with_ids``: compute each event's identity for a
    bus that dedupes by it (NATS)."""
    copied = 0
    while not stop.is_set():
        deliveries = await subscriber.fetch(_FETCH_RECORDS, _FETCH_WAIT_S)
        if not deliveries:
            continue
        now = time.time_ns()
        for delivery in deliveries:
            events, bad = flatten(delivery.value)
            target = flat_topic(delivery.topic)
            for key, event in events:
                msg_id = event_id(decode(event)) if with_ids else None
                await publisher.publish(target, key, event, msg_id)
            copied += len(events)
            for raw, reason in bad:
                letter = DeadLetter("mirror", raw.decode("utf-8", "replace")[:65_536], reason, now)
                await publisher.publish(deadletter_topic, letter.exchange, encode(letter), event_id(letter))
                log.warning("mirror dead-lettered an event", extra={"topic": delivery.topic, "reason": reason})
        await publisher.flush()  # every event on its flat topic before the records are committed
        await subscriber.commit(deliveries)
    return copied
