"""One simulated exchange: its dialect, its market (or a recording), its sessions and their subscriptions, its
faults and counters. The server routes each connection and HTTP request here by the URL's first path segment.

Subscriptions are keyed by the native symbol in upper case (clients spell Binance streams ``btcusdt``, its REST
``BTCUSDT``); frames are rendered with the dialect's own spelling. Frames of one step are rendered once and shared
by every session subscribed to the same (channel, symbol); the pacing loop lives in ``pacing.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from urllib.parse import parse_qsl

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator.dialect import SimDialect, SimTrade
from market_ingestor.simulator.faults import FaultConfig, FaultState, MalformedKind
from market_ingestor.simulator.journal import Journal, SessionEnd
from market_ingestor.simulator.market import Market
from market_ingestor.simulator.replay import Recording, feed
from market_ingestor.simulator.session import BatchingConnection, OutFrame, Session

log = logging.getLogger(__name__)

_WAIT_DROPPED_S = 10.0
_CLOSE_SLOW_CONSUMER_S = 15.0


@dataclass(slots=True)
class Counters:
    sessions_opened: int = 0
    frames_sent: int = 0  # real frames written to sockets (malformed extras not included)
    frames_discarded: int = 0  # not sent because the session was stalled
    malformed_sent: int = 0
    client_frames: int = 0
    invalid_client_frames: int = 0
    unknown_symbols: int = 0  # subscriptions to symbols the simulator does not list
    rest_requests: int = 0
    drops: int = 0  # connections aborted by the drop fault
    stalls: int = 0  # sessions stalled
    slow_consumers: int = 0  # sessions closed with 1008 because their outbox was full
    book_updates: int = 0  # market steps, over all symbols
    trades_generated: int = 0  # including those nobody was subscribed to


@dataclass(slots=True)
class SimStats(Counters):
    """A copy of an exchange's counters at one moment, with the current sessions and subscriptions."""

    sessions_current: int = 0
    subscriptions: int = 0  # (channel, symbol) pairs over the open sessions


@dataclass(frozen=True, slots=True)
class SentTrades:
    count: int  # trades written to at least one session
    qty: Decimal


class Venue:
    def __init__(
        self,
        name: str,
        dialect: SimDialect | None,
        source: Market | Recording,
        faults: FaultConfig,
        queue_limit: int,
        replay_speed: float | None = None,  # float-ok: a pace factor
        journal: Journal | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.dialect = dialect
        self.market = source if isinstance(source, Market) else None
        self.recording = source if isinstance(source, Recording) else None
        self.faults = FaultState(faults)
        self.queue_limit = queue_limit
        self.replay_speed = replay_speed
        self.counters = Counters()
        self.sessions: set[Session] = set()
        self.index: dict[tuple[Channel, str], set[Session]] = {}
        self.native_of: dict[str, str] = {}  # symbol -> native as the dialect spells it
        self.symbol_of: dict[str, str] = {}  # native in upper case -> symbol
        if self.market is not None and dialect is not None:
            for symbol in self.market.symbols:
                native = dialect.native(self.market.instrument(symbol))
                self.native_of[symbol] = native
                self.symbol_of[native.upper()] = symbol
        self._sent_count: dict[str, int] = {}
        self._sent_qty: dict[str, Decimal] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._overflowed: dict[Session, float] = {}  # slow consumers being closed -> when to abort them

    @property
    def ws_path(self) -> str:
        return self.dialect.ws_path if self.dialect is not None else ""

    def accepts_ws(self, path: str) -> bool:
        # A replay serves whatever path the client was configured with: the recording decides what it gets.
        return self.recording is not None or path.rstrip("/") == self.ws_path.rstrip("/")

    def key(self, symbol: str) -> str:
        """The subscription key of a normalized symbol or a native name in any case."""
        native = self.native_of.get(symbol)
        return (native or symbol).upper()

    # -- sessions and subscriptions

    async def serve(self, ws: BatchingConnection, query: str) -> None:
        self.counters.sessions_opened += 1
        session = Session(self, ws, self.queue_limit, f"{self.name}-{self.counters.sessions_opened}")
        self.sessions.add(session)
        if self.journal is not None:
            self.journal.event("O", self.name, session.id)
        self.notify()
        try:
            if self.recording is not None:
                recording, speed = self.recording, self.replay_speed
                await session.run(feeder=lambda queue: feed(queue, recording, speed))
                return
            if self.dialect is not None and self.dialect.greeting is not None:
                session.send(OutFrame(self.dialect.greeting, data=False))
            if self.dialect is not None and self.dialect.subscriptions_from_query is not None:
                pairs = self.dialect.subscriptions_from_query(dict(parse_qsl(query)))
                for frame in self._subscribe(session, pairs):
                    session.send(frame)
            await session.run()
        finally:
            self.sessions.discard(session)
            for sub in session.subs:
                self._unindex(session, sub)
            if self.journal is not None:
                self.journal.event("E", self.name, session.id, session.ended_by())
            self.notify()

    def on_client_frame(self, session: Session, text: str) -> list[OutFrame]:
        """What to send back for a client frame: the dialect's replies, then a snapshot per book subscription."""
        self.counters.client_frames += 1
        if self.dialect is None:
            return []
        request = self.dialect.parse_client_frame(text)
        frames = [OutFrame(reply, data=False) for reply in request.replies]
        if self.recording is not None:
            # A replay answers keep-alives only; the recording holds the exchange's answers to the rest.
            return frames if request.action == "ping" else []
        if request.action == "subscribe":
            frames += self._subscribe(session, request.subscriptions)
        elif request.action == "unsubscribe":
            for channel, native in request.subscriptions:
                sub = (channel, native.upper())
                session.subs.discard(sub)
                self._unindex(session, sub)
            self.notify()
        elif request.action == "invalid":
            self.counters.invalid_client_frames += 1
        return frames

    def _subscribe(self, session: Session, pairs: Sequence[tuple[Channel, str]]) -> list[OutFrame]:
        frames = []
        for channel, native in pairs:
            sub = (channel, native.upper())
            session.subs.add(sub)
            self.index.setdefault(sub, set()).add(session)
            symbol = self.symbol_of.get(sub[1])
            if symbol is None:
                self.counters.unknown_symbols += 1
                log.warning(
                    "subscription to a symbol the simulator does not list",
                    extra={"exchange": self.name, "native": native},
                )
                continue
            snapshot = self.dialect.render_book_snapshot if self.dialect is not None else None
            if channel is Channel.BOOK and snapshot is not None and self.market is not None:
                # Rendered now, before any later delta can be queued: the client sees snapshot, then deltas after.
                book = self.market.book(symbol, time.time_ns())
                frames.append(OutFrame(snapshot(self.native_of[symbol], book), symbol=symbol))
        self.notify()
        return frames

    def _unindex(self, session: Session, sub: tuple[Channel, str]) -> None:
        sessions = self.index.get(sub)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.index[sub]

    def slow_consumer(self, session: Session) -> None:
        self.counters.slow_consumers += 1
        session.end_reason = session.end_reason or SessionEnd.SLOW_CONSUMER
        log.warning("closing a slow consumer", extra={"exchange": self.name, "limit": session.queue.limit})
        session.queue.overflow()
        self._overflowed[session] = asyncio.get_running_loop().time() + _CLOSE_SLOW_CONSUMER_S
        self.notify()

    def reap_slow_consumers(self, now: float) -> None:  # float-ok: loop clock
        """Aborts slow consumers still open long after they were told to close: a client that reads nothing
        never lets the close frame (nor a keep-alive ping) out of our send buffer."""
        for session, deadline in list(self._overflowed.items()):
            if session not in self.sessions:
                del self._overflowed[session]
            elif now > deadline:
                del self._overflowed[session]
                session.abort(SessionEnd.SLOW_CONSUMER)

    # -- what the writer reports

    def count_written(self, frames: Sequence[OutFrame]) -> None:
        self.counters.frames_sent += len(frames)
        for frame in frames:
            if frame.trades and not frame.written:  # shared frames count once, for the first session
                frame.written = True
                self._sent_count[frame.symbol] = self._sent_count.get(frame.symbol, 0) + frame.trades
                self._sent_qty[frame.symbol] = self._sent_qty.get(frame.symbol, Decimal(0)) + frame.qty

    def journal_written(self, session_id: str, frames: Sequence[OutFrame], malformed: Sequence[MalformedKind]) -> None:
        """Journals what one session's write put in the transport: its trades, and the malformed frames."""
        assert self.journal is not None
        for kind in malformed:
            self.journal.event("M", self.name, session_id, kind)
        for frame in frames:
            if frame.journal_rows:
                self.journal.trades(self.name, session_id, frame.symbol, frame.journal_rows)

    def trade_frames(self, symbol: str, trades: Sequence[SimTrade]) -> list[OutFrame]:
        """Renders trades once. Where the dialect sends one trade per frame each frame carries its own; otherwise
        the batch is counted with the last frame, so a trade is never counted before it is written, and journaled
        with the first, so a trade is never stored without having been journaled."""
        assert self.dialect is not None
        texts = self.dialect.render_trades(self.native_of[symbol], trades)
        rows = [(str(t.trade_id), format(t.price, "f"), format(t.qty, "f"), t.side, t.ts_ns) for t in trades]
        if len(texts) == len(trades):
            frames = [OutFrame(text, symbol=symbol, trades=1, qty=t.qty) for text, t in zip(texts, trades, strict=True)]
            for frame, row in zip(frames, rows, strict=True):
                frame.journal_rows = (row,)
            return frames
        frames = [OutFrame(text, symbol=symbol) for text in texts]
        if frames:
            frames[-1].trades, frames[-1].qty = len(trades), sum((t.qty for t in trades), Decimal(0))
            frames[0].journal_rows = tuple(rows)
        return frames

    # -- faults

    async def drop_connections(self) -> int:
        dropped = tuple(self.sessions)
        for session in dropped:
            session.abort()
        self.counters.drops += len(dropped)
        await self.wait_until(lambda: self.sessions.isdisjoint(dropped), _WAIT_DROPPED_S)
        return len(dropped)

    def send_raw(self, text: str) -> int:
        """Queues ``text`` as one frame on every open session (not market data: never corrupted, never counted as
        a trade); the number of sessions."""
        for session in self.sessions:
            session.send(OutFrame(text, data=False))
        return len(self.sessions)

    def stall(self, seconds: float | None) -> int:
        until = math.inf if seconds is None else asyncio.get_running_loop().time() + seconds
        for session in self.sessions:
            session.stalled_until = until
        self.counters.stalls += len(self.sessions)
        self.notify()
        return len(self.sessions)

    def unstall(self) -> None:
        for session in self.sessions:
            session.stalled_until = 0.0
        self.notify()

    # -- observing

    def notify(self) -> None:
        """Wakes ``wait_until`` callers to re-check their condition; cheap when nobody waits."""
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not condition():
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(f"{self.name}: still waiting after {timeout_s}s; now {self.stats()}") from None

    def stats(self) -> SimStats:
        return SimStats(
            **asdict(self.counters),
            sessions_current=len(self.sessions),
            subscriptions=sum(len(session.subs) for session in self.sessions),
        )

    def sent_trades(self, symbol: str) -> SentTrades:
        return SentTrades(self._sent_count.get(symbol, 0), self._sent_qty.get(symbol, Decimal(0)))

    # -- REST

    def rest(self, path: str, query: str) -> tuple[int, bytes]:
        self.counters.rest_requests += 1
        if self.recording is not None:
            body = self.recording.rest_body(path, query)
            if body is not None:
                return 200, body
        dialect, market = self.dialect, self.market
        if dialect is None or market is None:
            return 404, _error(f"the replay of {self.name} recorded no REST response for {path}")
        if path == dialect.instruments_path:
            return 200, dialect.render_instruments(market.instruments())
        if path == dialect.rest_book_path and dialect.render_rest_book is not None:
            native = dict(parse_qsl(query)).get(dialect.rest_book_symbol_param, "")
            symbol = self.symbol_of.get(native.upper())
            if symbol is None:
                return 400, _error(f"unknown symbol {native!r} in {dialect.rest_book_symbol_param!r}")
            return 200, dialect.render_rest_book(self.native_of[symbol], market.book(symbol, time.time_ns()))
        return 404, _error(f"{self.name} has no REST route {path}")


def _error(message: str) -> bytes:
    return msgspec.json.encode({"error": message})
