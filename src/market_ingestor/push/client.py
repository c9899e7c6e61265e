"""One connected client: its subscriptions, its outbox, and the writer task that drains the outbox.

The fan-out never waits for a client. ``deliver`` is synchronous: while the connection is open, nothing is
queued and the socket takes data (its write buffer is under ``push.write_limit_bytes``), the message's
prebuilt WebSocket frame is written to the transport at once: no task switch, no await, no per-client
encoding. That is wire-identical to ``connection.send``: server frames are unmasked, the gateway negotiates no
extension and never fragments, and websockets keeps no per-frame state for data frames. Otherwise the message
goes to the outbox and the client's own writer task sends it through ``connection.send`` (which waits for this
socket alone) when the socket drains. Order is kept because nothing is written directly while anything is
queued, and the writer hands a message to the socket before it waits for the socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from market_ingestor.push.metrics import PushMetrics
from market_ingestor.push.outbox import Outbox
from market_ingestor.push.protocol import Outgoing, Pair, dropped_notice


class Client:
    __slots__ = (
        "_metrics",
        "_protocol",
        "_wake",
        "_write_limit",
        "closing",
        "conn",
        "last_request_at",
        "outbox",
        "subscriptions",
    )

    def __init__(self, conn: ServerConnection, queue_size: int, write_limit_bytes: int, metrics: PushMetrics) -> None:
        self.conn = conn
        self._protocol = conn.protocol  # its state says whether data frames may still go out
        self.outbox: Outbox[Outgoing] = Outbox(queue_size)
        self.subscriptions: set[Pair] = set()
        self.last_request_at = time.monotonic()
        self.closing = False  # the gateway decided to close it (lag, idle, shutdown)
        self._write_limit = write_limit_bytes
        self._metrics = metrics
        self._wake = asyncio.Event()

    def deliver(
        self,
        message: Outgoing,
        key: Hashable | None = None,
        conflate: bool = False,
        revision_of: Hashable | None = None,
    ) -> None:
        """Write ``message`` now if the socket takes it, else queue it (see :mod:`market_ingestor.push.outbox`)."""
        if not self.outbox:
            if self._protocol.state is not State.OPEN:
                return  # closing: nothing more goes out
            transport = self.conn.transport
            if transport.is_closing():
                return  # the socket failed; websockets learns it on the next loop turn
            if transport.get_write_buffer_size() <= self._write_limit:
                transport.write(message.wire)
                self._metrics.messages_sent_total += 1
                return
        outbox = self.outbox
        superseded = outbox.superseded
        self._metrics.updates_dropped_total += outbox.put(message, key, conflate, time.monotonic(), revision_of)
        self._metrics.updates_superseded_total += outbox.superseded - superseded
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
                        await conn.send(dropped_notice(lost).payload, text=True)
                        self._metrics.messages_sent_total += 1
                    message = outbox.pop()
                    if message is None:
                        break
                    # Waits only for this client's socket (flow control), never for anything shared.
                    await conn.send(message.payload, text=True)
                    self._metrics.messages_sent_total += 1
        except ConnectionClosed:
            return
