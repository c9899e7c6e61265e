"""One client connection: a bounded outbox, a writer that applies the send-side faults, a reader that hands
client frames to the venue.

Market-data frames are rendered once per step and the same :class:`OutFrame` is put in the outbox of every
session subscribed to that stream; the writer sends what has queued up with one socket write and counts a
frame's trades as sent the first time any session writes it. A session whose outbox is full is a slow consumer:
its outbox is emptied (memory stays bounded) and it is closed with 1008, as exchanges do, once the writer gets
its turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator.faults import MalformedKind, corrupt
from market_ingestor.simulator.journal import SessionEnd, TradeRow

if TYPE_CHECKING:
    from market_ingestor.simulator.venue import Venue

log = logging.getLogger(__name__)

_ZERO = Decimal(0)
_MAX_BATCH = 1024  # frames the writer takes from the outbox at once
_CLOSE_TIMEOUT_S = 10.0


class OutFrame:
    __slots__ = ("data", "journal_rows", "qty", "symbol", "text", "trades", "written")

    def __init__(self, text: str, data: bool = True, symbol: str = "", trades: int = 0, qty: Decimal = _ZERO) -> None:
        self.text = text
        self.data = data  # market data (may be corrupted by the malformed fault); False for acks, pongs, greetings
        self.symbol = symbol
        self.trades = trades  # trades this frame carries, and their total quantity
        self.qty = qty
        self.written = False
        # For the journal: (trade id, price, qty, side, ts_ns) as sent, of the trades whose first frame this is.
        self.journal_rows: tuple[TradeRow, ...] = ()


class FrameQueue:
    """A session's outbox. ``offer`` never waits (fan-out must not be held up by one client); ``put`` waits for
    room, for the producers that may (replays, and the market while the slow-send fault is on)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[OutFrame] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: OutFrame) -> bool:
        if self.closed or len(self._frames) >= self.limit:
            return False
        self._frames.append(frame)
        self._ready.set()
        return True

    async def put(self, frame: OutFrame) -> None:
        while len(self._frames) >= self.limit and not self.closed:
            self._room.clear()
            await self._room.wait()
        self.offer(frame)

    def overflow(self) -> None:
        """Gives up on this outbox: drops what it holds and tells the writer to close the session."""
        self.overflowed = True
        self.close()

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self._ready.set()
        self._room.set()

    async def take(self) -> list[OutFrame] | None:
        """The next frames, oldest first; None once the outbox is closed."""
        while not self._frames:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frames = self._frames
        batch = [frames.popleft() for _ in range(min(len(frames), _MAX_BATCH))]
        self._room.set()
        return batch


class BatchingConnection(ServerConnection):
    """A server connection that writes many messages with one socket write (passed to ``serve`` as its
    ``create_connection``). To a local client each write system call costs more than framing the message, so
    one write per batch rather than per message multiplies what the simulator can send."""

    async def send_texts(self, texts: Sequence[str], on_written: Callable[[], None]) -> None:
        """Sends each text as a message; ``on_written`` runs once they are in the transport, before waiting for
        the transport to drain (a stall or a count taken meanwhile must see them as sent)."""
        # What send() does for each text, in the same send_context (state check, flow control, closing
        # detection), except that the frames are joined before they reach the transport.
        async with self.send_context():
            for text in texts:
                self.protocol.send_text(text.encode())
            self.transport.write(b"".join(self.protocol.data_to_send()))
            on_written()


class Session:
    def __init__(self, venue: Venue, ws: BatchingConnection, queue_limit: int, session_id: str = "") -> None:
        self.venue = venue
        self.id = session_id  # "{exchange}-{n}", for the journal
        self.end_reason: SessionEnd | None = None  # set when the server ends it (a fault, a slow consumer)
        self.ws = ws
        self.queue = FrameQueue(queue_limit)
        self.subs: set[tuple[Channel, str]] = set()  # (channel, native symbol in upper case)
        self.stalled_until = 0.0  # loop time; inf while stalled on demand

    def send(self, frame: OutFrame) -> None:
        if not self.queue.offer(frame) and not self.queue.closed:
            self.venue.slow_consumer(self)

    def abort(self, reason: SessionEnd = SessionEnd.DROPPED) -> None:
        """Drops the connection without a close frame, as a network failure would."""
        self.end_reason = self.end_reason or reason
        self.ws.transport.abort()

    def ended_by(self) -> SessionEnd:
        """Why the session ended, once it has."""
        if self.end_reason is not None:
            return self.end_reason
        return SessionEnd.CLIENT_CLOSED if self.ws.protocol.close_rcvd is not None else SessionEnd.CLIENT_GONE

    async def run(self, feeder: Callable[[FrameQueue], Coroutine[Any, Any, None]] | None = None) -> None:
        """Serves the connection until it closes: the reader here, the writer (and a replay's feeder) beside it."""
        async with asyncio.TaskGroup() as tasks:
            writer = tasks.create_task(self._write())
            fed = tasks.create_task(feeder(self.queue)) if feeder is not None else None
            try:
                await self._read()
            finally:
                self.queue.close()
                writer.cancel()
                if fed is not None:
                    fed.cancel()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                for frame in self.venue.on_client_frame(self, text):
                    self.send(frame)
        except ConnectionClosed:
            pass

    async def _write(self) -> None:
        try:
            while (batch := await self.queue.take()) is not None:
                if self.venue.faults.slow_send_ms:
                    for frame in batch:
                        await asyncio.sleep(self.venue.faults.slow_send_ms / 1000)
                        await self._write_batch([frame])
                else:
                    await self._write_batch(batch)
                self.venue.notify()  # once per batch: tests wait on counters without polling
            if self.queue.overflowed:
                reason = f"slow consumer: more than {self.queue.limit} frames queued"
                await self._close(CloseCode.POLICY_VIOLATION, reason)
        except ConnectionClosed:
            pass

    async def _write_batch(self, batch: list[OutFrame]) -> None:
        venue, counters = self.venue, self.venue.counters
        if self.stalled_until > asyncio.get_running_loop().time():
            counters.frames_discarded += len(batch)  # a stuck connection loses what falls due meanwhile
            return
        texts = []
        malformed: list[MalformedKind] = []
        for frame in batch:
            if frame.data and (kind := venue.faults.malformed_before_next()):
                texts.append(corrupt(frame.text, kind))
                malformed.append(kind)
                counters.malformed_sent += 1
            texts.append(frame.text)

        def written() -> None:
            venue.count_written(batch)
            if venue.journal is not None:
                venue.journal_written(self.id, batch, malformed)

        await self.ws.send_texts(texts, on_written=written)

    async def _close(self, code: int, reason: str) -> None:
        try:
            # close() first flushes what is buffered; a client that stopped reading would hold it forever.
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.ws.close(code, reason)
        except TimeoutError:
            log.warning("closing a slow consumer timed out; aborting", extra={"exchange": self.venue.name})
            self.abort()
