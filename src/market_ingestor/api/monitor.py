"""What the control panel shows, kept up to date inside the API process by following the bus:

- connectors: the latest :class:`ConnectorStatus` per (ingest instance, exchange) from the status topic, with
  frame and event rates from two successive records; a record older than three reporting intervals is stale
  (the ingest process is gone or cut off) and one older than ``FORGET_AFTER_S`` is dropped;
- subscriptions: the configured exchanges and symbols with every command of the control topic applied (the same
  fold as the ingest service's), and the sending of new commands, answered once this process has read its own
  command back from the topic (so the page shows what the ingestors will apply, not a local guess);
- throughput and lag, from Kafka offsets or JetStream stream and consumer info (:mod:`market_ingestor.api.offsets`).

Each follower runs under a supervisor that restarts it with backoff when the bus fails; the page then shows the
error and the last known values instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiokafka.errors import KafkaError

from market_ingestor.api.offsets import GroupLag, Throughput, offset_monitor
from market_ingestor.bus import Bus, Publisher, open_bus
from market_ingestor.bus.keys import event_id
from market_ingestor.bus.topics import Topics
from market_ingestor.config import Config
from market_ingestor.errors import BusError, MarketIngestorError
from market_ingestor.ingestor.control import (
    ControlState,
    commands_in,
    control_topic,
    fold,
    initial_state,
    send_command,
)
from market_ingestor.ingestor.exchanges import REGISTRY
from market_ingestor.model import ConnectorState, ConnectorStatus, ControlCommand
from market_ingestor.retry import RetryPolicy

log = logging.getLogger(__name__)

FORGET_AFTER_S = 600.0  # float-ok: a duration
MAX_CONNECTORS = 1_000  # (instance, exchange) pairs kept; the oldest report is dropped beyond
STATUS_TAIL = 1_000  # status records read back at start: the recent past of every live connector
CONFIRM_TIMEOUT_S = 5.0  # float-ok: how long a command's sender waits to read it back
_status_decoder = msgspec.json.Decoder(ConnectorStatus)
NS = 1_000_000_000
FOLLOWER_RETRY = RetryPolicy(1.0, 30.0)  # a failed panel follower: 1 s doubling to 30 s, forever


class ConnectorView(msgspec.Struct, frozen=True):
    instance: str
    exchange: str
    state: ConnectorState
    stale: bool  # no report for three intervals: the state is the last one known
    report_age_s: float  # float-ok: a duration
    connections: int
    connected: int
    reconnects: int
    last_message_age_s: float | None  # float-ok: a duration, at the time of the report
    frames_per_s: float | None  # float-ok: a rate
    events_per_s: float | None  # float-ok: a rate
    symbols: list[str]


class ExchangeView(msgspec.Struct, frozen=True):
    exchange: str
    enabled: bool
    symbols: list[str]


def _rate(new: int, old: int, elapsed_ns: int) -> float | None:  # float-ok: a rate
    # A counter that went back is a restarted process: no rate from that pair.
    return (new - old) * NS / elapsed_ns if elapsed_ns > 0 and new >= old else None


@dataclass(slots=True)
class _Entry:
    latest: ConnectorStatus
    previous: ConnectorStatus | None


class StatusBoard:
    """The latest report of every connector; pure (no I/O), the time is passed in."""

    def __init__(self, interval_s: float, max_entries: int = MAX_CONNECTORS) -> None:  # float-ok: seconds
        self.stale_after_ns = int(3 * interval_s * NS)
        self.max_entries = max_entries
        self.entries: dict[tuple[str, str], _Entry] = {}

    def apply(self, status: ConnectorStatus) -> None:
        key = (status.instance, status.exchange)
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_entries:
                oldest = min(self.entries, key=lambda k: self.entries[k].latest.ts)
                if self.entries[oldest].latest.ts >= status.ts:
                    return  # older than everything kept: the least interesting report of all
                del self.entries[oldest]
            self.entries[key] = _Entry(status, None)
        elif status.ts > entry.latest.ts:
            entry.previous, entry.latest = entry.latest, status

    def view(self, now_ns: int) -> list[ConnectorView]:
        forget_ns = int(FORGET_AFTER_S * NS)
        for key in [k for k, e in self.entries.items() if now_ns - e.latest.ts > forget_ns]:
            del self.entries[key]
        return [self._view(self.entries[key], now_ns) for key in sorted(self.entries)]

    def _view(self, entry: _Entry, now_ns: int) -> ConnectorView:
        s, before = entry.latest, entry.previous
        age_ns = max(0, now_ns - s.ts)
        elapsed_ns = s.ts - before.ts if before is not None else 0
        # As measured when the report was made: adding the report's age would make a busy connector look
        # silent; a report that is itself old shows as stale instead.
        silence_s = s.last_message_age_ms / 1000 if s.last_message_age_ms is not None else None  # float-ok
        return ConnectorView(
            instance=s.instance,
            exchange=s.exchange,
            state=s.state,
            stale=age_ns > self.stale_after_ns and s.state != "stopped",
            report_age_s=age_ns / NS,
            connections=s.connections,
            connected=s.connected,
            reconnects=s.reconnects,
            last_message_age_s=silence_s,
            frames_per_s=_rate(s.frames, before.frames, elapsed_ns) if before is not None else None,
            events_per_s=_rate(s.events, before.events, elapsed_ns) if before is not None else None,
            symbols=s.symbols,
        )


class PanelMonitor:
    """Follows the status and control topics and samples offsets, between :meth:`start` and :meth:`stop`."""

    def __init__(self, config: Config, bus: Bus | None = None) -> None:
        self.config = config
        self.bus = bus or open_bus(config.bus)
        self.board = StatusBoard(config.ingest.status_interval_s)
        self.initial = initial_state(config)
        self.state: ControlState = self.initial
        self.offsets = offset_monitor(config)
        self.errors: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._publisher: Publisher | None = None
        self._publisher_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="panel-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._publisher is not None:
            with contextlib.suppress(MarketIngestorError):
                await self._publisher.stop()
            self._publisher = None

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._supervise("status", self._follow_status))
            group.create_task(self._supervise("control", self._follow_control))
            group.create_task(self._supervise("offsets", self.offsets.run))

    async def _supervise(self, name: str, follow: Callable[[], Awaitable[None]]) -> None:
        retries = FOLLOWER_RETRY.retries(f"panel follower {name}")
        while True:
            started = time.monotonic()
            try:
                await follow()
            except (MarketIngestorError, KafkaError, OSError) as exc:
                self.errors[name] = f"{name}: {exc}"
                log.warning("panel follower failed; retrying", extra={"follower": name, "reason": str(exc)})
            except Exception as exc:  # a bug: keep serving the page, with the reason on it and in the log
                self.errors[name] = f"{name}: {exc!r}"
                log.exception("panel follower failed; retrying", extra={"follower": name})
            if time.monotonic() - started > 60:
                retries.reset()  # it worked for a while: this is a new failure, not the same one again
            await asyncio.sleep(retries.next_delay_s())

    async def _follow_status(self) -> None:
        follower = self.bus.follower([self.config.bus.topic_prefix + Topics.STATUS], tail=STATUS_TAIL)
        await follower.start()
        try:
            self.errors.pop("status", None)
            while True:
                for delivery in await follower.fetch(max_records=1000, timeout_s=1.0):
                    try:
                        self.board.apply(_status_decoder.decode(delivery.value))
                    except msgspec.MsgspecError as exc:
                        log.warning("skipped a bad status record", extra={"reason": str(exc)})
        finally:
            await follower.stop()

    async def _follow_control(self) -> None:
        follower = self.bus.follower([control_topic(self.config)])
        await follower.start()
        try:
            self.errors.pop("control", None)
            self.state = self.initial  # the topic is read again from its start
            while True:
                commands = commands_in(await follower.fetch(max_records=1000, timeout_s=1.0))
                if commands:
                    self.state = fold(self.state, commands)
                    self._confirm(commands)
        finally:
            await follower.stop()

    def _confirm(self, commands: list[ControlCommand]) -> None:
        for cmd in commands:
            waiter = self._waiters.pop(event_id(cmd), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # --- what the page reads and sends ----------------------------------------------------------------------

    def exchanges(self) -> list[ExchangeView]:
        state = self.state
        return [
            ExchangeView(name, name in state.enabled, sorted(state.symbols.get(name, ()))) for name in sorted(REGISTRY)
        ]

    def connectors(self) -> list[ConnectorView]:
        return self.board.view(time.time_ns())

    def throughput(self) -> list[Throughput]:
        return self.offsets.throughput()

    def lag(self) -> list[GroupLag]:
        return self.offsets.lag()

    def problems(self) -> list[str]:
        found = dict(self.errors)
        if self.offsets.error:
            found["offsets"] = self.offsets.error
        return [found[name] for name in sorted(found)]

    async def send(self, cmd: ControlCommand) -> bool:
        """Publishes ``cmd``; True once this process has read it back from the control topic (within
        ``CONFIRM_TIMEOUT_S``), False if it is sent but not seen yet. Raises :class:`BusError` if not sent."""
        key = event_id(cmd)
        waiter = self._waiters[key] = asyncio.get_running_loop().create_future()
        try:
            async with self._publisher_lock:  # one command at a time: a flood of requests queues here
                if self._publisher is None:
                    publisher = self.bus.publisher()
                    await publisher.start()
                    self._publisher = publisher
                try:
                    await send_command(self.config, cmd, self._publisher)
                except BusError:
                    publisher, self._publisher = self._publisher, None
                    with contextlib.suppress(MarketIngestorError):
                        await publisher.stop()
                    raise
            if self._task is None:
                return False  # not following the topic (tests of the page alone)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), CONFIRM_TIMEOUT_S)
            return waiter.done()
        finally:
            self._waiters.pop(key, None)
