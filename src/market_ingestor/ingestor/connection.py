"""The one WebSocket connection loop every exchange shares.

A :class:`Connection` carries a set of (channel, native symbol) subscriptions to one endpoint and keeps it
alive until stopped: connect, subscribe, keep-alive frames where the exchange wants them, a read deadline
that treats silence as a stall, reconnect with exponential backoff and full jitter (reset after a healthy
period), resubscribe everything on reconnect. What a frame means is the caller's business (``on_frame``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from market_ingestor.ingestor import metrics
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec
from market_ingestor.retry import RetryPolicy

log = logging.getLogger(__name__)

FrameHandler = Callable[[str | bytes, int], Awaitable[None]]
Subscription = tuple[Channel, str]  # (channel, native symbol)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    read_timeout_s: float = 60.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 30.0
    open_timeout_s: float = 10.0
    max_frame_bytes: int = 16 * 1024 * 1024  # a deep book snapshot is large; beyond this a frame is refused
    max_queued_frames: int = 64  # frames the library buffers before it stops reading the socket
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0

    def retry_policy(self) -> RetryPolicy:
        """Reconnects: full jitter, forever (a connection is given up only by stop())."""
        return RetryPolicy(self.backoff_initial_s, self.backoff_max_s, jitter=True)


class StalledError(Exception):
    """No frame within the read deadline."""


class ClosedError(Exception):
    """The exchange closed the connection cleanly; we reconnect all the same."""


def subscription_frames(spec: ExchangeSpec, subscriptions: Iterable[Subscription], subscribe: bool) -> list[str]:
    """The exchange's frames for these subscriptions, one request per distinct set of channels."""
    channels_of: dict[str, set[Channel]] = {}
    for channel, native in subscriptions:
        channels_of.setdefault(native, set()).add(channel)
    natives_of: dict[tuple[Channel, ...], list[str]] = {}
    for native, channels in channels_of.items():
        natives_of.setdefault(tuple(sorted(channels)), []).append(native)
    build = spec.subscribe if subscribe else spec.unsubscribe
    return [frame for channels, natives in natives_of.items() for frame in build(sorted(natives), channels)]


class Connection:
    def __init__(
        self,
        spec: ExchangeSpec,
        url: str,
        on_frame: FrameHandler,
        settings: ConnectionSettings,
        subscriptions: Iterable[Subscription] = (),
        on_open: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.url = url
        self.settings = settings
        self.subscriptions: set[Subscription] = set(subscriptions)
        self.connected = asyncio.Event()
        self.opened_count = 0
        self.reconnects = 0
        self._on_frame = on_frame
        self._on_open = on_open
        self._retries = settings.retry_policy().retries(f"{spec.name} connection to {url}")
        self._ws: ClientConnection | None = None
        self._opening: asyncio.Task[ClientConnection] | None = None  # the handshake under way
        self._stopping = asyncio.Event()
        self._last_frame_at = 0.0
        self._stalled = False

    async def run(self) -> None:
        """Connects and reconnects until :meth:`stop`, which ends a handshake or a backoff wait at once."""
        while not self._stopping.is_set():
            opened_at = None
            try:
                ws = await self._open()
                if ws is None:
                    break  # stopped during the handshake
                async with ws:
                    if self._stopping.is_set():
                        break  # stopped as the handshake completed: the socket is closed unused
                    opened_at = time.monotonic()
                    await self._serve(ws)
            except (OSError, WebSocketException, StalledError, ClosedError, TimeoutError) as exc:
                if not self._stopping.is_set():
                    log.warning(
                        "connection lost", extra={"exchange": self.spec.name, "url": self.url, "error": repr(exc)}
                    )
            if self._stopping.is_set():
                break
            if opened_at is not None and time.monotonic() - opened_at >= self.settings.healthy_after_s:
                self._retries.reset()
            metrics.RECONNECTS.labels(self.spec.name).inc()
            self.reconnects += 1
            delay_s = self._retries.next_delay_s()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def _open(self) -> ClientConnection | None:
        """The opened socket, or None when :meth:`stop` came during the handshake (which it cancels: a socket
        opened after stop() would be served, and read, for ever)."""
        self._opening = asyncio.create_task(self._handshake(), name=f"{self.spec.name}-handshake")
        try:
            return await self._opening
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stopping.is_set() and current is not None and not current.cancelling():
                return None  # cancelled by stop(), not a cancellation of run() itself
            raise
        finally:
            self._opening = None

    async def _handshake(self) -> ClientConnection:
        return await connect(
            self.url,
            open_timeout=self.settings.open_timeout_s,
            max_size=self.settings.max_frame_bytes,
            max_queue=self.settings.max_queued_frames,
            ping_interval=self.settings.ping_interval_s,
            ping_timeout=self.settings.ping_timeout_s,
        )

    def silence_s(self) -> float | None:  # float-ok: a duration
        """Seconds since the last frame (or since the socket opened, before its first); None if it never opened."""
        return time.monotonic() - self._last_frame_at if self.opened_count else None

    async def _serve(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.opened_count += 1
        metrics.CONNECTED.labels(self.spec.name).inc()
        try:
            for frame in subscription_frames(self.spec, self.subscriptions, subscribe=True):
                await ws.send(frame)
            if self._on_open is not None:
                await self._on_open(self)
            self.connected.set()
            # Owned here and cancelled with the read loop (a TaskGroup would wrap the read loop's
            # disconnect errors in an ExceptionGroup).
            keepalive = asyncio.create_task(self._keepalive(ws)) if self.spec.keepalive_frame else None
            try:
                await self._read(ws)
            finally:
                if keepalive is not None:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                        await keepalive
        finally:
            self.connected.clear()
            self._ws = None
            metrics.CONNECTED.labels(self.spec.name).dec()

    async def _read(self, ws: ClientConnection) -> None:
        # A watchdog checks the time of the last frame, instead of a timeout around every recv(): at 100k
        # frames/s a timer per frame costs more than parsing the frame.
        watchdog = asyncio.create_task(self._watchdog(ws))
        on_frame = self._on_frame
        try:
            async for frame in ws:
                self._last_frame_at = time.monotonic()
                await on_frame(frame, time.time_ns())
        finally:
            watchdog.cancel()
        if self._stalled:
            raise StalledError(f"no frame from {self.url} for {self.settings.read_timeout_s}s")
        raise ClosedError(f"{self.url} closed the connection (code {ws.close_code})")

    async def _watchdog(self, ws: ClientConnection) -> None:
        timeout_s = self.settings.read_timeout_s
        self._stalled = False
        self._last_frame_at = time.monotonic()
        while True:
            silent_s = time.monotonic() - self._last_frame_at
            if silent_s >= timeout_s:
                self._stalled = True
                await ws.close(code=1011, reason="read deadline")  # ends the read loop
                return
            await asyncio.sleep(timeout_s - silent_s)

    async def _keepalive(self, ws: ClientConnection) -> None:
        assert self.spec.keepalive_frame is not None
        while True:
            await asyncio.sleep(self.spec.keepalive_interval_s)
            await ws.send(self.spec.keepalive_frame)

    async def subscribe(self, subscriptions: Iterable[Subscription]) -> None:
        new = set(subscriptions) - self.subscriptions
        self.subscriptions |= new
        await self._send(subscription_frames(self.spec, new, subscribe=True))

    async def unsubscribe(self, subscriptions: Iterable[Subscription]) -> None:
        gone = set(subscriptions) & self.subscriptions
        self.subscriptions -= gone
        await self._send(subscription_frames(self.spec, gone, subscribe=False))

    async def resubscribe(self, subscriptions: Iterable[Subscription]) -> None:
        """Unsubscribe and subscribe again: the exchange then sends a fresh snapshot (book resync)."""
        subs = set(subscriptions) & self.subscriptions
        await self._send(subscription_frames(self.spec, subs, subscribe=False))
        await self._send(subscription_frames(self.spec, subs, subscribe=True))

    async def _send(self, frames: list[str]) -> None:
        ws = self._ws
        if ws is None:
            return  # not connected: the subscription set is sent on (re)connect
        try:
            for frame in frames:
                await ws.send(frame)
        except WebSocketException as exc:
            # The read loop sees the same failure and reconnects, resubscribing from the set.
            log.warning("send failed", extra={"exchange": self.spec.name, "error": repr(exc)})

    async def stop(self) -> None:
        """Ends :meth:`run`: a handshake under way is cancelled, an open socket closed, a backoff wait cut short."""
        self._stopping.set()
        if self._opening is not None:
            self._opening.cancel()
        ws = self._ws
        if ws is not None:
            await ws.close()
