"""The topics of the pipeline: their names, which event goes to which, and how long each keeps data; both bus
adapters create their topics from this."""

from __future__ import annotations

from dataclasses import dataclass

from market_ingestor.model import (
    AnyEvent,
    BookDelta,
    BookSnapshot,
    ConnectorStatus,
    ControlCommand,
    DeadLetter,
    IndicatorValue,
    Kline,
    Quote,
    Trade,
)

DAY_S = 24 * 3600


class Topics:
    """Logical topic names. Kafka uses them as topic names; NATS as subject prefixes and stream names."""

    TRADES = "market.trades"
    QUOTES = "market.quotes"
    BOOK = "market.book"
    KLINES = "market.klines"
    INDICATORS = "market.indicators"
    CONTROL = "market.control"
    DEADLETTER = "market.deadletter"
    STATUS = "market.status"

    ALL: tuple[str, ...] = (TRADES, QUOTES, BOOK, KLINES, INDICATORS, CONTROL, DEADLETTER, STATUS)


TOPIC_OF: dict[type, str] = {
    Trade: Topics.TRADES,
    Quote: Topics.QUOTES,
    BookSnapshot: Topics.BOOK,
    BookDelta: Topics.BOOK,
    Kline: Topics.KLINES,
    IndicatorValue: Topics.INDICATORS,
    DeadLetter: Topics.DEADLETTER,
    ControlCommand: Topics.CONTROL,
    ConnectorStatus: Topics.STATUS,
}


def topic_of(event: AnyEvent) -> str:
    return TOPIC_OF[type(event)]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    retention_s: int = 7 * DAY_S
    # Compacted: only the latest record per key is kept (Kafka cleanup.policy=compact, NATS one per subject).
    compacted: bool = False
    partitions: int | None = None  # None: the bus default


PIPELINE_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(Topics.TRADES),
    TopicSpec(Topics.QUOTES),
    TopicSpec(Topics.BOOK),
    TopicSpec(Topics.KLINES, retention_s=30 * DAY_S),
    TopicSpec(Topics.INDICATORS, retention_s=30 * DAY_S),
    TopicSpec(Topics.CONTROL, compacted=True, partitions=1),
    TopicSpec(Topics.DEADLETTER, retention_s=14 * DAY_S, partitions=3),
    TopicSpec(Topics.STATUS, compacted=True, partitions=1),
)


def prefixed(specs: tuple[TopicSpec, ...], prefix: str) -> tuple[TopicSpec, ...]:
    """The same topics under ``prefix`` (see ``BusConfig.topic_prefix``)."""
    return tuple(TopicSpec(prefix + spec.name, spec.retention_s, spec.compacted, spec.partitions) for spec in specs)
