"""The transport seen by the rest of the pipeline: publish with a key, consume with explicit commit.

Topics are the logical names of :class:`market_ingestor.bus.topics.Topics`. Keys are ``{exchange}.{symbol}`` so
one instrument stays ordered (one Kafka partition, one NATS subject; ``bus.keys.bus_key``). ``msg_id`` is the
event's identity (``bus.keys.event_id``): buses that can deduplicate re-sends (NATS JetStream's ``Nats-Msg-Id``)
use it, Kafka's idempotent producer covers its own retries.

Delivery is at-least-once: a consumer that stops without committing gets the same records again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from market_ingestor.bus.topics import PIPELINE_TOPICS, TopicSpec


@dataclass(frozen=True, slots=True)
class Delivery:
    """One consumed record. ``position`` is the Kafka offset or the NATS stream sequence."""

    topic: str
    key: str
    value: bytes
    partition: int
    position: int
    redelivered: bool = False
    handle: Any = field(default=None, repr=False, compare=False)  # the client's message, for acks


class Publisher(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Flush what is pending, then close."""

    async def publish(self, topic: str, key: str, value: bytes, msg_id: str | None = None) -> None:
        """Queue one record; waits (backpressure) while the bounded send buffer is full."""

    async def flush(self) -> None:
        """Return once every record published so far is acknowledged by the broker; raise if any failed."""


class Subscriber(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def fetch(self, max_records: int = 1000, timeout_s: float = 1.0) -> list[Delivery]:
        """Up to ``max_records`` records, waiting at most ``timeout_s`` for the first; [] on timeout."""

    async def commit(self, deliveries: Sequence[Delivery]) -> None:
        """Mark these records processed; they are not delivered to this group again."""

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records not fetched yet, per (topic, partition) this consumer reads now (NATS: per topic, as 0)."""


class Bus(Protocol):
    # True where the bus drops a re-send of a msg_id it has already stored (within its window).
    deduplicates_resends: bool

    async def ensure_topics(self, topics: Sequence[TopicSpec] = PIPELINE_TOPICS) -> None:
        """Create the topics (Kafka) or streams (NATS) the pipeline uses, if missing."""

    def publisher(self) -> Publisher: ...

    async def read_topic(self, topic: str) -> list[Delivery]:
        """Everything the topic holds now, oldest first, without joining a group or committing anything
        (for small topics such as the compacted control topic)."""

    def subscriber(self, topics: Sequence[str], group: str) -> Subscriber:
        """A consumer in ``group``: members of one group share the work; a new group starts at the beginning."""

    def follower(self, topics: Sequence[str], *, tail: int | None = None) -> Subscriber:
        """Reads ``topics`` for this process alone: no group, nothing stored on the server, ``commit`` does
        nothing. With ``tail=None`` every record from the beginning and then new ones (for the control topic).
        With ``tail=n`` it starts ``n`` records before the end of each partition (Kafka) or of each stream (NATS)
        as found by ``start()``: ``tail=0`` gets exactly the records published after ``start()`` returns (for
        live views such as the push gateway, several of which run side by side)."""
