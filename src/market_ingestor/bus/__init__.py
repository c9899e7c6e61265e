"""The pluggable transport. ``open_bus(config)`` picks the implementation; callers never branch on which."""

from __future__ import annotations

from market_ingestor.bus.base import Bus, Delivery, Publisher, Subscriber
from market_ingestor.bus.topics import PIPELINE_TOPICS, TopicSpec
from market_ingestor.config import BusConfig


def open_bus(config: BusConfig) -> Bus:
    """The bus named by ``config.kind``; constructing it does no I/O."""
    if config.kind == "nats":
        from market_ingestor.bus.nats import NatsBus

        return NatsBus(config.nats, config.batch)
    from market_ingestor.bus.kafka import KafkaBus

    return KafkaBus(config.kafka, config.batch)


__all__ = ["PIPELINE_TOPICS", "Bus", "Delivery", "Publisher", "Subscriber", "TopicSpec", "open_bus"]
