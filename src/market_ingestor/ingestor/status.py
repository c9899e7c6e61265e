"""The ingest service's report to the control panel: per exchange, a :class:`ConnectorStatus` record on the
compacted status topic every ``ingest.status_interval_s``, keyed by instance and exchange, so a reader finds the
latest state of every connector without asking the ingest process anything. A connector that stops (exchange
disabled, process shutting down) gets one last record with state ``stopped``.

States: ``starting`` (the exchange's instrument listing is not loaded yet), ``idle`` (no symbol subscribed, so
no connection), ``connected`` (every connection open), ``degraded`` (some open), ``disconnected`` (none open:
reconnecting with backoff).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Mapping

from market_ingestor.bus import Publisher
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.ingestor import metrics
from market_ingestor.ingestor.connector import ExchangeConnector
from market_ingestor.model import ConnectorState, ConnectorStatus, encode

Connectors = Mapping[str, ExchangeConnector | None]  # exchange -> its connector (None: still starting)


def instance_name(configured: str = "") -> str:
    """The name of this ingest process in status keys: usable as a NATS subject token (no dots)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", configured or socket.gethostname()).strip("-")
    return name[:64] or "ingest"


def _counts(exchange: str) -> tuple[int, int]:
    """Frames and events of the exchange since the process started (the metrics' own counters)."""
    frames = sum(count for (name, _), count in list(metrics.FRAMES.counts.items()) if name == exchange)
    events = sum(count for (name, _, _), count in list(metrics.EVENTS.counts.items()) if name == exchange)
    return frames, events


def _without_connector(instance: str, exchange: str, state: ConnectorState) -> ConnectorStatus:
    frames, events = _counts(exchange)
    return ConnectorStatus(instance, exchange, state, 0, 0, 0, None, frames, events, [], time.time_ns())


def connector_status(instance: str, exchange: str, connector: ExchangeConnector | None) -> ConnectorStatus:
    if connector is None:
        return _without_connector(instance, exchange, "starting")
    frames, events = _counts(exchange)
    connections = connector.connections
    open_count = sum(connection.connected.is_set() for connection in connections)
    silences = [s for s in (connection.silence_s() for connection in connections) if s is not None]
    state: ConnectorState
    if not connections:
        state = "idle"
    elif open_count == len(connections):
        state = "connected"
    else:
        state = "degraded" if open_count else "disconnected"
    return ConnectorStatus(
        instance=instance,
        exchange=exchange,
        state=state,
        connections=len(connections),
        connected=open_count,
        reconnects=sum(connection.reconnects for connection in connections),
        last_message_age_ms=round(min(silences) * 1000) if silences else None,
        frames=frames,
        events=events,
        symbols=sorted(connector.symbols),
        ts=time.time_ns(),
    )


def stopped_status(instance: str, exchange: str) -> ConnectorStatus:
    return _without_connector(instance, exchange, "stopped")


class StatusReporter:
    def __init__(self, publisher: Publisher, topic: str, instance: str, interval_s: float) -> None:  # float-ok
        self.publisher = publisher
        self.topic = topic
        self.instance = instance
        self.interval_s = interval_s  # float-ok: a duration
        self._reported: set[str] = set()

    async def run(self, connectors: Callable[[], Connectors]) -> None:
        """Reports until cancelled."""
        while True:
            await self.report(connectors())
            await asyncio.sleep(self.interval_s)

    async def report(self, connectors: Connectors) -> None:
        for exchange, connector in sorted(connectors.items()):
            await self._send(connector_status(self.instance, exchange, connector))
        for exchange in sorted(self._reported - connectors.keys()):
            await self._send(stopped_status(self.instance, exchange))
        self._reported = set(connectors)

    async def report_stopped(self) -> None:
        """The last word of a process that shuts down: every connector it reported is stopped."""
        await self.report({})

    async def _send(self, status: ConnectorStatus) -> None:
        await self.publisher.publish(self.topic, bus_key(status), encode(status), event_id(status))
