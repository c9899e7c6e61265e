"""Batch records: on the hot topics one bus record carries a JSON array of events of one partition.

Faust (and every per-record consumer) pays tens of microseconds per record; a record of hundreds of trades pays it
once for all of them. So the value of a record on ``market.trades``, ``market.quotes``, ``market.book``,
``market.klines`` and ``market.indicators`` is ``[event, event, ...]``: the same tagged event objects as before,
in publish order, all of one Kafka partition (their keys hash to it) or, on NATS, of one subject (one
instrument). The record's key is the key of its first event. The compacted topics (``market.control``,
``market.status``) and ``market.deadletter`` keep one event per record. The contract for other languages is in
``docs/topics.md``.

This module is pure: :class:`RecordBuilder` fills one record, :func:`batch_id` names one (NATS' ``Nats-Msg-Id``),
:class:`BatchDecoder` reads them back, and also reads a single-object record (a record written before batching,
or by another producer) as a batch of one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Generic, TypeVar

import msgspec

from market_ingestor.bus.topics import Topics
from market_ingestor.model import AnyEvent

T = TypeVar("T")

# The topics whose records are arrays of events.
BATCHED_TOPICS: tuple[str, ...] = (Topics.TRADES, Topics.QUOTES, Topics.BOOK, Topics.KLINES, Topics.INDICATORS)
_BATCHED_SUFFIXES = tuple("." + topic for topic in BATCHED_TOPICS)

# Bytes a record adds around its events: "[", "]" and one "," between two events.
_FRAME_BYTES = 2


def is_batched(topic: str) -> bool:
    """True for a physical topic name whose records are arrays: a hot topic, with or without the topic prefix."""
    return topic in BATCHED_TOPICS or topic.endswith(_BATCHED_SUFFIXES)


def batch_value(events: Iterable[bytes]) -> bytes:
    """The record value of already-encoded events: concatenating JSON texts with commas inside brackets is a
    JSON array of them, so no event is encoded twice."""
    return b"[" + b",".join(events) + b"]"


def batch_id(event_ids: Iterable[str]) -> str:
    """A deterministic identity of a batch: the same events in the same order give the same id, so a re-sent
    batch is stored once by a bus that deduplicates (NATS JetStream's ``Nats-Msg-Id``)."""
    digest = hashlib.blake2b(digest_size=16)
    for event_id in event_ids:
        digest.update(event_id.encode())
        digest.update(b"\n")
    return "b." + digest.hexdigest()


class RecordBuilder:
    """The events of one record being filled, bounded by ``max_events`` and ``max_bytes`` (of the value).

    One event larger than ``max_bytes`` still makes a record of its own: the bound is there to stay well under
    the broker's message size limit, which the caller checks against its own setting."""

    __slots__ = ("event_ids", "events", "key", "max_bytes", "max_events", "opened_s", "size")

    def __init__(self, max_events: int, max_bytes: int, opened_s: float = 0.0) -> None:  # float-ok: a clock
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.opened_s = opened_s  # when it was started (a monotonic clock): a partial record lingers from then
        self.key: str | None = None
        self.events: list[bytes] = []
        self.event_ids: list[str] = []
        self.size = _FRAME_BYTES

    def __len__(self) -> int:
        return len(self.events)

    def fits(self, value: bytes) -> bool:
        """Whether one more event of this size stays within the bounds (always true for an empty record)."""
        if not self.events:
            return True
        return len(self.events) < self.max_events and self.size + 1 + len(value) <= self.max_bytes

    def add(self, key: str, value: bytes, event_id: str | None = None) -> None:
        if self.key is None:
            self.key = key
        if self.events:
            self.size += 1
        self.events.append(value)
        self.size += len(value)
        if event_id is not None:
            self.event_ids.append(event_id)

    def value(self) -> bytes:
        return batch_value(self.events)

    def identity(self) -> str | None:
        """:func:`batch_id` of the events, when every one of them was added with its identity."""
        if not self.events or len(self.event_ids) != len(self.events):
            return None
        return batch_id(self.event_ids)


class BatchDecoder(Generic[T]):
    """Decodes a record of a batched topic into its events of type ``T``.

    :meth:`decode` reads the whole array at once (the fast path). When that fails, :meth:`split` reads it event by
    event, so the bad events of a record can be dead-lettered and the good ones kept."""

    def __init__(self, event_type: type[T]) -> None:
        self.event_type = event_type
        # "trade" for Trade; a union of types (a reader of two topics) is named by its members: "trade | quote".
        self._name = " | ".join(t.__name__.lower() for t in getattr(event_type, "__args__", (event_type,)))
        self._many = msgspec.json.Decoder(list[event_type] | event_type)  # type: ignore[valid-type]
        self._one = msgspec.json.Decoder(event_type)

    def decode(self, value: bytes) -> list[T]:
        """Every event of the record; raises ``msgspec.MsgspecError`` if any of them is not a ``T``."""
        decoded = self._many.decode(value)
        return decoded if isinstance(decoded, list) else [decoded]

    def split(self, value: bytes) -> tuple[list[T], list[tuple[bytes, str]]]:
        """The events that decode, and ``(raw event, reason)`` for those that do not (the whole value when it
        is not JSON at all)."""
        try:
            parts = _raw_parts(value)
        except msgspec.MsgspecError as exc:
            return [], [(value, f"not JSON: {exc}")]
        good: list[T] = []
        bad: list[tuple[bytes, str]] = []
        for part in parts:
            try:
                good.append(self._one.decode(part))
            except msgspec.MsgspecError as exc:
                bad.append((bytes(part), f"not a {self._name}: {exc}"))
        return good, bad


def split_events(value: bytes) -> list[bytes]:
    """The raw JSON text of each event of a record (one for a single-object record), e.g. for ``tail``."""
    return [bytes(part) for part in _raw_parts(value)]


_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_ONE = msgspec.json.Decoder(msgspec.Raw)


def _raw_parts(value: bytes) -> list[msgspec.Raw]:
    if value.lstrip()[:1] == b"[":
        return _RAW_ARRAY.decode(value)
    return [_RAW_ONE.decode(value)]


_ANY_EVENTS = msgspec.json.Decoder(list[AnyEvent] | AnyEvent)


def decode_events(value: bytes) -> list[AnyEvent]:
    """Every event of a record of any topic (a batch, or a single event), each as its tagged type."""
    decoded = _ANY_EVENTS.decode(value)
    return decoded if isinstance(decoded, list) else [decoded]
