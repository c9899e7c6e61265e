"""One connected client: its subscriptions, its outbox, and the writer task that drains the outbox.

The fan-out never waits for a client. ``deliver`` is synchronous: while the client's socket takes data (its
write buffer is under ``push.write_limit_bytes``) and nothing is queued, the frame is written at once with
websockets' ``broadcast`` (no task switch, no await); otherwise it goes to the outbox and the client's own
writer task sends it when the socket drains. Order is kept because nothing is written directly while anything
is queued, and the writer hands a frame to the socket before it waits for the socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from market_ingestor.push.metrics import PushMetrics
from market_ingestor.push.outbox import Outbox
from market_ingestor.push.protocol import Pair, dropped_frame


class Client:
    __slots__ = ("_metrics", "_wake", "_write_limit", "closing", "conn", "last_request_at", "outbox", "subscriptions")

    def __init__(self, conn: ServerConnection, queue_size: int, write_limit_bytes: int, metrics: PushMetrics) -> None:
        self.conn = conn
        self.outbox = Outbox(queue_size)
        self.subscriptions: set[Pair] = set()
        self.last_request_at = time.monotonic()
        self.closing = False  # the gateway decided to close it (lag, idle, shutdown)
        self._write_limit = write_limit_bytes
        self._metrics = metrics
        self._wake = asyncio.Event()

    def deliver(self, frame: bytes, key: Hashable | None = None, conflate: bool = False) -> None:
        """Send ``frame`` now if the socket takes it, else queue it (see :mod:`market_ingestor.push.outbox`)."""
        if not self.outbox and self.conn.transport.get_write_buffer_size() <= self._write_limit:
            broadcast((self.conn,), frame, text=True)  # skips a connection that is already closing
            self._metrics.messages_sent_total += 1
            return
        self._metrics.updates_dropped_total += self.outbox.put(frame, key, conflate, time.monotonic())
        self._wake.set()

    async def write_loop(self) -> None:
        """Drains the outbox whenever something is queued; returns when the connection closes."""
        conn, outbox = self.conn, self.outbox
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while outbox:
                    lost = outbox.take_lost()
                    if lost:
                        await conn.send(dropped_frame(lost), text=True)
                        self._metrics.messages_sent_total += 1
                    frame = outbox.pop()
                    if frame is None:
                        break
                    # Waits only for this client's socket (flow control), never for anything shared.
                    await conn.send(frame, text=True)
                    self._metrics.messages_sent_total += 1
        except ConnectionClosed:
            return
