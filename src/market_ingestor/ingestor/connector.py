"""One exchange's connector: its connections, what they subscribe, and the integrity of what comes back.

Frames are parsed by the exchange's pure ``parse``; this module adds what needs state: trade-id gap
detection, the local book per symbol with the exchange's sequence and checksum rules, book resync (a REST
snapshot or a fresh WebSocket subscription), dead-lettering of frames that cannot be parsed or give no event
(anything but the exchange's protocol chatter), live symbol changes, and sharding symbols over connections within
the exchange's per-connection limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from market_ingestor.errors import MarketIngestorError, NotNormalized, ParseError, RetriesExhausted, SymbolError
from market_ingestor.ingestor import metrics
from market_ingestor.ingestor.book import BookSync, BookVerdict
from market_ingestor.ingestor.connection import Connection, ConnectionSettings, Subscription
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext
from market_ingestor.ingestor.rest import RestClient
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, DeadLetter, MarketEvent, Trade
from market_ingestor.observability import SYMBOLS
from market_ingestor.retry import RetryPolicy

log = logging.getLogger(__name__)

# A book snapshot over REST: 0.5 s doubling to 30 s; given up (logged) after 999 retries, about eight hours.
SNAPSHOT_RETRY = RetryPolicy(0.5, 30.0, give_up_after=999)

# Receives the events of one frame at a time: one queue operation per frame, not per event.
Sink = Callable[[list[MarketEvent | DeadLetter]], Awaitable[None]]
RawTap = Callable[[str, str | bytes, int], None]  # (url, frame, recv_ts): the capture file


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    ws_url: str
    rest_url: str
    channels: tuple[Channel, ...]
    connection: ConnectionSettings
    book_buffer_size: int = 5_000


class ExchangeConnector:
    def __init__(
        self,
        spec: ExchangeSpec,
        settings: ConnectorSettings,
        registry: InstrumentRegistry,
        rest: RestClient,
        sink: Sink,
        raw_tap: RawTap | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.registry = registry
        self.symbols: set[str] = set()
        self.connections: list[Connection] = []
        self._rest = rest
        self._sink = sink
        self._pending: list[MarketEvent | DeadLetter] = []
        self._frame_labels: dict[str, tuple[str, str]] = {}  # symbol -> (exchange, symbol label)
        self._event_labels: dict[tuple[str, type], tuple[str, str, str]] = {}
        self._raw_tap = raw_tap
        self._native_of: dict[str, str] = {}
        self._connection_of: dict[str, Connection] = {}
        self._books: dict[str, BookSync] = {}
        self._held: dict[str, deque[BookDelta]] = {}  # deltas awaiting a REST snapshot
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._last_trade_id: dict[str, int] = {}
        self._group: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def run(self, symbols: set[str]) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            await self.set_symbols(symbols)
            await self._stopping.wait()
            async with asyncio.TaskGroup() as closing:  # side by side: a close handshake can take close_timeout
                for connection in self.connections:
                    closing.create_task(connection.stop())
            for task in self._snapshot_tasks.values():
                task.cancel()
        self._group = None

    async def stop(self) -> None:
        self._stopping.set()

    # --- subscriptions ---------------------------------------------------------------------------------------

    def _subscriptions(self, native: str) -> list[Subscription]:
        return [(channel, native) for channel in self.settings.channels]

    async def set_symbols(self, symbols: set[str]) -> None:
        """Subscribe what is new, unsubscribe what is gone; unknown symbols are refused with a logged reason."""
        for symbol in sorted(self.symbols - symbols):
            await self._remove(symbol)
        for symbol in sorted(symbols - self.symbols):
            try:
                native = self.spec.native_symbol(symbol, self.registry)
            except SymbolError as exc:
                log.error("symbol refused", extra={"exchange": self.spec.name, "symbol": symbol, "error": str(exc)})
                continue
            await self._add(symbol, native)

    async def _add(self, symbol: str, native: str) -> None:
        self.symbols.add(symbol)
        self._native_of[symbol] = native
        self._books[symbol] = BookSync(self.spec.book_sequence, self.spec.book_checksum, self.spec.book_checksum_depth)
        connection = self._connection_with_room()
        self._connection_of[symbol] = connection
        if Channel.BOOK in self.settings.channels and self.spec.book_resync == "rest":
            self._expect_rest_snapshot(symbol)
        await connection.subscribe(self._subscriptions(native))

    async def _remove(self, symbol: str) -> None:
        self.symbols.discard(symbol)
        native = self._native_of.pop(symbol)
        connection = self._connection_of.pop(symbol)
        self._books.pop(symbol, None)
        self._held.pop(symbol, None)
        task = self._snapshot_tasks.pop(symbol, None)
        if task is not None:
            task.cancel()
        await connection.unsubscribe(self._subscriptions(native))

    def _connection_with_room(self) -> Connection:
        limit = self.spec.max_symbols_per_connection
        for connection in self.connections:
            if len({native for _, native in connection.subscriptions}) < limit:
                return connection
        connection = Connection(
            self.spec, self.settings.ws_url, self._on_frame, self.settings.connection, on_open=self._on_open
        )
        self.connections.append(connection)
        assert self._group is not None, "connector is not running"
        self._group.create_task(connection.run(), name=f"{self.spec.name}-connection-{len(self.connections)}")
        return connection

    async def _on_open(self, connection: Connection) -> None:
        """A (re)connected socket starts from fresh snapshots: local books of its symbols are reset."""
        for symbol, owner in self._connection_of.items():
            if owner is connection:
                self._books[symbol].reset()
                if Channel.BOOK in self.settings.channels and self.spec.book_resync == "rest":
                    self._expect_rest_snapshot(symbol)

    # --- frames ----------------------------------------------------------------------------------------------

    async def _on_frame(self, frame: str | bytes, recv_ts: int) -> None:
        if self._raw_tap is not None:
            self._raw_tap(self.settings.ws_url, frame, recv_ts)
        try:
            events = self.spec.parse(frame, ParseContext(self.registry, recv_ts))
        except ParseError as exc:
            if isinstance(exc, NotNormalized):  # well-formed, but gives no event: counted apart, dead-lettered too
                metrics.NOT_NORMALIZED.labels(self.spec.name, exc.reason).inc()
            self._dead_letter(frame, str(exc), recv_ts)
            events = []
        except Exception as exc:  # a parser bug must cost one frame, not the connection: keep it with the reason
            log.exception("parser failed", extra={"exchange": self.spec.name})
            self._dead_letter(frame, f"internal parser error: {exc!r}", recv_ts)
            events = []
        symbol = events[0].symbol if events and events[0].symbol in self.symbols else metrics.NO_SYMBOL
        metrics.FRAMES.counts[self._frame_label(symbol)] += 1
        for event in events:
            if event.symbol not in self.symbols:
                continue  # in flight after an unsubscribe, or not ours
            if isinstance(event, BookDelta):
                await self._on_delta(event)
            elif isinstance(event, BookSnapshot):
                await self._on_snapshot(event)
            else:
                if isinstance(event, Trade) and self.spec.contiguous_trade_ids:
                    self._check_trade_id(event)
                self._emit(event)
        await self._flush()

    def _frame_label(self, symbol: str) -> tuple[str, str]:
        labels = self._frame_labels.get(symbol)
        if labels is None:
            labels = self._frame_labels[symbol] = (
                (self.spec.name, symbol) if symbol == metrics.NO_SYMBOL else SYMBOLS(self.spec.name, symbol)
            )
        return labels

    def _emit(self, event: MarketEvent) -> None:
        key = (event.symbol, type(event))
        labels = self._event_labels.get(key)
        if labels is None:
            labels = self._event_labels[key] = (*SYMBOLS(self.spec.name, event.symbol), type(event).__name__)
        metrics.EVENTS.counts[labels] += 1
        self._pending.append(event)

    async def _flush(self) -> None:
        if self._pending:
            events, self._pending = self._pending, []
            await self._sink(events)

    def _dead_letter(self, frame: str | bytes, reason: str, recv_ts: int) -> None:
        metrics.DEAD_LETTERS.labels(self.spec.name).inc()
        raw = frame if isinstance(frame, str) else frame.decode("utf-8", "backslashreplace")
        self._pending.append(DeadLetter(self.spec.name, raw, reason, recv_ts))

    def _check_trade_id(self, trade: Trade) -> None:
        try:
            trade_id = int(trade.trade_id)
        except ValueError:
            return
        last = self._last_trade_id.get(trade.symbol)
        if last is not None and trade_id > last + 1:
            metrics.SEQUENCE_GAPS.labels(*SYMBOLS(self.spec.name, trade.symbol), "trade").inc()
            log.warning(
                "trade id gap",
                extra={"exchange": self.spec.name, "symbol": trade.symbol, "after": last, "got": trade_id},
            )
        if last is None or trade_id > last:
            self._last_trade_id[trade.symbol] = trade_id

    # --- books -----------------------------------------------------------------------------------------------

    async def _on_snapshot(self, snapshot: BookSnapshot) -> None:
        sync = self._books[snapshot.symbol]
        if sync.on_snapshot(snapshot) is BookVerdict.CHECKSUM:
            await self._resync(snapshot.symbol, "snapshot checksum mismatch")
            return
        self._emit(snapshot)
        held = self._held.pop(snapshot.symbol, None)
        for delta in held or ():
            if not await self._apply(delta):
                return

    async def _on_delta(self, delta: BookDelta) -> None:
        held = self._held.get(delta.symbol)
        if held is not None:
            if len(held) >= self.settings.book_buffer_size:
                held.popleft()  # the snapshot will be judged against what is kept; too old ones only fail
            held.append(delta)
            return
        await self._apply(delta)

    async def _apply(self, delta: BookDelta) -> bool:
        verdict = self._books[delta.symbol].on_delta(delta)
        if verdict is BookVerdict.OK:
            self._emit(delta)
        elif verdict in (BookVerdict.GAP, BookVerdict.CHECKSUM):
            metrics.SEQUENCE_GAPS.labels(*SYMBOLS(self.spec.name, delta.symbol), "book").inc()
            await self._resync(delta.symbol, f"book {verdict.value}")
            return False
        return True  # STALE (older than the snapshot) and WAITING (no snapshot yet) are skipped

    async def _resync(self, symbol: str, reason: str) -> None:
        metrics.BOOK_RESYNCS.labels(self.spec.name).inc()
        log.warning("book resync", extra={"exchange": self.spec.name, "symbol": symbol, "reason": reason})
        self._books[symbol].reset()
        if self.spec.book_resync == "rest":
            self._expect_rest_snapshot(symbol)
        else:
            await self._connection_of[symbol].resubscribe([(Channel.BOOK, self._native_of[symbol])])

    def _expect_rest_snapshot(self, symbol: str) -> None:
        """Hold deltas and fetch a snapshot over REST (Binance's documented way to start or resync a book)."""
        self._held[symbol] = deque()
        if self._stopping.is_set():
            return  # frames still read while the sockets close: no fetch that run() would have to wait for
        running = self._snapshot_tasks.get(symbol)
        if running is not None and not running.done():
            return
        assert self._group is not None
        self._snapshot_tasks[symbol] = self._group.create_task(self._fetch_snapshot(symbol))

    async def _fetch_snapshot(self, symbol: str) -> None:
        spec = self.spec
        assert spec.book_snapshot_path is not None and spec.parse_book_snapshot is not None
        native = self._native_of[symbol]
        url = self.settings.rest_url + spec.book_snapshot_path(native)
        # Let the first deltas arrive first, so the snapshot is not older than everything held.
        connection = self._connection_of[symbol]
        await connection.connected.wait()
        retries = SNAPSHOT_RETRY.retries(f"{spec.name} {symbol} book snapshot")
        while True:
            try:
                body, recv_ts = await self._rest.get(url)
                snapshot = spec.parse_book_snapshot(body, symbol, recv_ts)
                break
            except MarketIngestorError as exc:
                log.warning("book snapshot failed", extra={"exchange": spec.name, "url": url, "error": str(exc)})
                try:
                    await asyncio.sleep(retries.next_delay_s())
                except RetriesExhausted:
                    return  # logged; the book stays unsynced (its deltas held) until its next resync
        if symbol in self.symbols:
            await self._on_snapshot(snapshot)
            await self._flush()


@contextlib.asynccontextmanager
async def running(connector: ExchangeConnector, symbols: set[str]):  # type: ignore[no-untyped-def]
    """Runs a connector for the duration of a ``with`` block (tests, tools)."""
    task = asyncio.create_task(connector.run(symbols))
    try:
        yield connector
    finally:
        await connector.stop()
        await task
