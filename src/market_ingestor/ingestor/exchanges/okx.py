"""OKX v5 public WebSocket (``/ws/v5/public``) and the ``/api/v5/public/instruments`` listing.

Every data frame is ``{"arg": {"channel": C, "instId": I}, "data": [...]}`` (book channels add ``"action"``);
the exact channel name picks the handler:

- ``trades`` / ``trades-all`` -> :class:`Trade`; ``side`` is the taker's side. ``trades`` aggregates the fills of
  one taker order at one price under the last fill's id, so ids grow but skip: no contiguity check.
- ``bbo-tbt`` (best bid/ask, tick by tick; levels ``[px, sz, "0", orders]``, ``seqId``) -> :class:`Quote` with
  ``seq=seqId``; ``tickers`` (``bidPx``/``bidSz``/``askPx``/``askSz``, no sequence) -> :class:`Quote` too. We
  subscribe to ``bbo-tbt``; ``tickers`` is read because recorded and older sessions use it. A side with no
  orders (empty ``bidPx``, empty level list) gives no quote: such a frame raises :class:`NotNormalized`
  (``incomplete``) when none of its entries makes a quote.
- ``books`` (and the same-shaped ``books-l2-tbt``/``books50-l2-tbt``): ``action`` ``snapshot`` ->
  :class:`BookSnapshot`, ``update`` -> :class:`BookDelta` with ``last_seq=first_seq=seqId`` and
  ``prev_seq=prevSeqId``. A delta continues the book when its ``prevSeqId`` equals the book's ``seqId``
  (no-change heartbeats have ``seqId == prevSeqId``; after a reset ``seqId`` may be smaller: still continuous).
  Sessions recorded before OKX added ``seqId``/``prevSeqId`` (2022) carry only the checksum: the sequence fields
  are then None and the checksum alone guards the book.
- protocol chatter (``PROTOCOL_CHATTER``) parses to ``[]``: the events ``subscribe``/``unsubscribe`` (acks),
  ``notice`` and ``channel-conn-count``, and the keep-alive answer ``pong`` (plain text, not JSON).
  ``{"event": "error"}`` raises :class:`ParseError` with OKX's code and message; other channels (candles, ...)
  and other events raise :class:`NotNormalized`: both reach the dead-letter topic.

Book checksum (OKX's documented algorithm): take the top 25 bids and asks, interleave them as
``bidPx:bidSz:askPx:askSz:...`` (when one side has fewer levels the other continues alone), CRC32 the text and
read it as a signed 32-bit integer. Prices and sizes are the exchange's own strings. OKX has announced that the
field stays but is always 0 once it stops computing it (June 2026): a checksum of 0 is read as "none sent", so
such books are guarded by ``seqId``/``prevSeqId`` alone (a genuine CRC of 0 skips one check in 2**32).

Symbols: ``BTC-USDT`` -> ``BTCUSDT``; swaps ``UNI-USD-SWAP`` -> ``UNIUSD-PERP``; futures ``BTC-USD-220527`` ->
``BTCUSD-220527``. Options are not normalized. Keep-alive: the client sends the text ``ping`` (OKX drops a
connection after 30 s without traffic) and OKX answers ``pong``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

import msgspec

from market_ingestor.errors import NotNormalized, ParseError, SymbolError
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext
from market_ingestor.ingestor.exchanges.wire import (
    DECODE_ERRORS,
    NO_DATA,
    EpochMs,
    SymbolCache,
    chatter_or_unhandled,
    check_trade,
    decode,
    level_ok,
    listed_instrument,
    listed_or,
    quote_ok,
)
from market_ingestor.instruments import Instrument, InstrumentKind, InstrumentRegistry, make_symbol
from market_ingestor.model import BookDelta, BookSnapshot, Level, MarketEvent, Quote, Trade

EXCHANGE = "okx"
WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
REST_URL = "https://www.okx.com"
INSTRUMENTS_PATH = "/api/v5/public/instruments?instType=SPOT"
CHECKSUM_DEPTH = 25
KEEPALIVE_FRAME = "ping"
PONG = "pong"

# Our channels -> OKX channel names.
CHANNELS: dict[Channel, str] = {
    Channel.TRADES: "trades",
    Channel.QUOTES: "bbo-tbt",
    Channel.BOOK: "books",
}

# Protocol chatter, parsed to [] without a word: events (subscription acks, notices, connection counts) and the
# plain-text answer to our keep-alive.
PROTOCOL_CHATTER: frozenset[str] = frozenset({"subscribe", "unsubscribe", "notice", "channel-conn-count", PONG})
_no_events = chatter_or_unhandled(EXCHANGE, PROTOCOL_CHATTER)

Levels = tuple[Level, ...]
# Sequence ids (prevSeqId is -1 on a snapshot).
_Seq = Annotated[int, msgspec.Meta(ge=-1, le=2**63 - 1)]
# A book level: [price, size, "0" (deprecated liquidated orders), order count]; only the first two are used.
_WireLevel = tuple[Decimal, ...]


# --- wire formats -------------------------------------------------------------------------------------------


class _Arg(msgspec.Struct, frozen=True):
    channel: str
    instId: str = ""


class _Envelope(msgspec.Struct, frozen=True):
    """A push (``arg`` + ``data``, books add ``action``) or an event (``event``, errors add ``code``/``msg``)."""

    arg: _Arg | None = None
    data: msgspec.Raw = NO_DATA
    action: str | None = None
    event: str | None = None
    code: str | int = ""
    msg: str = ""


class OkxTrade(msgspec.Struct, frozen=True):
    """``trades``: the fills of one taker order at one price; ``side`` is the taker's side."""

    instId: str
    tradeId: str
    px: Decimal
    sz: Decimal
    side: Literal["buy", "sell"]
    ts: EpochMs

    def to_trade(self, symbol: str, recv_ts: int) -> Trade:
        check_trade("okx trade", self.px, self.sz)
        return Trade(EXCHANGE, symbol, self.tradeId, self.px, self.sz, self.side, self.ts * 1_000_000, recv_ts)


class OkxTicker(msgspec.Struct, frozen=True):
    """``tickers``: best bid/ask among 24 h statistics. An empty side has empty strings, so these stay text."""

    instId: str
    bidPx: str
    bidSz: str
    askPx: str
    askSz: str
    ts: EpochMs

    def to_quotes(self, symbol: str, recv_ts: int) -> list[MarketEvent]:
        if not (self.bidPx and self.bidSz and self.askPx and self.askSz):
            return []  # one side of the book is empty: there is no best bid/ask to report
        try:
            bid_px, bid_sz = Decimal(self.bidPx), Decimal(self.bidSz)
            ask_px, ask_sz = Decimal(self.askPx), Decimal(self.askSz)
        except InvalidOperation:
            raise ParseError(f"okx tickers {self.instId}: bid/ask fields are not decimal numbers") from None
        if not quote_ok(bid_px, bid_sz, ask_px, ask_sz):
            raise ParseError(f"okx tickers {self.instId}: prices and sizes must be finite and not negative")
        return [Quote(EXCHANGE, symbol, bid_px, bid_sz, ask_px, ask_sz, self.ts * 1_000_000, recv_ts)]


class OkxBbo(msgspec.Struct, frozen=True):
    """``bbo-tbt``: the best level of each side, tick by tick."""

    asks: list[_WireLevel]
    bids: list[_WireLevel]
    ts: EpochMs
    seqId: _Seq | None = None

    def to_quotes(self, symbol: str, recv_ts: int) -> list[MarketEvent]:
        if not (self.bids and self.asks):
            return []  # one side of the book is empty
        ((bid_px, bid_sz),) = _levels(self.bids[:1], "bbo-tbt")
        ((ask_px, ask_sz),) = _levels(self.asks[:1], "bbo-tbt")
        return [Quote(EXCHANGE, symbol, bid_px, bid_sz, ask_px, ask_sz, self.ts * 1_000_000, recv_ts, self.seqId)]


class OkxBook(msgspec.Struct, frozen=True):
    """``books``: a snapshot (400 levels a side) or the changed levels; size "0" removes a level."""

    asks: list[_WireLevel]
    bids: list[_WireLevel]
    ts: EpochMs
    checksum: Annotated[int, msgspec.Meta(ge=-(2**31), lt=2**31)] | None = None
    seqId: _Seq | None = None
    prevSeqId: _Seq | None = None

    def to_snapshot(self, symbol: str, recv_ts: int) -> BookSnapshot:
        bids, asks = _levels(self.bids, "books"), _levels(self.asks, "books")
        checksum = self.checksum or None  # 0: OKX no longer computes it (see the module docstring)
        return BookSnapshot(EXCHANGE, symbol, bids, asks, self.seqId, self.ts * 1_000_000, recv_ts, checksum)

    def to_delta(self, symbol: str, recv_ts: int) -> BookDelta:
        bids, asks = _levels(self.bids, "books"), _levels(self.asks, "books")
        seq, checksum = self.seqId, self.checksum or None
        return BookDelta(EXCHANGE, symbol, bids, asks, seq, seq, self.ts * 1_000_000, recv_ts, self.prevSeqId, checksum)


class _Listed(msgspec.Struct, frozen=True):
    instType: str
    instId: str
    baseCcy: str = ""
    quoteCcy: str = ""
    uly: str = ""
    instFamily: str = ""


class _Listing(msgspec.Struct, frozen=True):
    code: str | int
    msg: str = ""
    data: list[_Listed] = []


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_trades_decoder = msgspec.json.Decoder(list[OkxTrade], strict=False)
_tickers_decoder = msgspec.json.Decoder(list[OkxTicker], strict=False)
_bbo_decoder = msgspec.json.Decoder(list[OkxBbo], strict=False)
_books_decoder = msgspec.json.Decoder(list[OkxBook], strict=False)
_listing_decoder = msgspec.json.Decoder(_Listing)
_encoder = msgspec.json.Encoder()


# --- checks -------------------------------------------------------------------------------------------------


def _levels(wire: list[_WireLevel], channel: str) -> Levels:
    levels = []
    for level in wire:
        if len(level) < 2:
            raise ParseError(f"okx {channel}: a level needs at least [price, size], got {len(level)} fields")
        price, qty = level[0], level[1]
        if not level_ok(price, qty):
            raise ParseError(f"okx {channel}: level [{price}, {qty}] needs a positive price and a size >= 0")
        levels.append((price, qty))
    return tuple(levels)


# --- checksum, sequence -------------------------------------------------------------------------------------


def book_checksum(bids: Sequence[tuple[str, str]], asks: Sequence[tuple[str, str]]) -> int:
    """OKX's CRC32 of the top 25 levels: ``bid1px:bid1sz:ask1px:ask1sz:bid2px:...`` as a signed 32-bit int."""
    bids, asks = bids[:CHECKSUM_DEPTH], asks[:CHECKSUM_DEPTH]
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc >= 2**31 else crc


def book_sequence(last_seq: int, delta: BookDelta) -> bool:
    """An update continues the book when its ``prevSeqId`` is the book's last ``seqId``."""
    return delta.prev_seq == last_seq


# --- symbols ------------------------------------------------------------------------------------------------


def symbol_of(native: str) -> str:
    """OKX's naming rule: ``BASE-QUOTE`` (spot), ``BASE-QUOTE-SWAP`` (perpetual), ``BASE-QUOTE-YYMMDD`` (future).

    Raises :class:`SymbolError` for anything else (options ``BTC-USD-220514-22000-C``, malformed names)."""
    parts = native.split("-")
    if len(parts) == 2:
        return make_symbol(parts[0], parts[1])
    if len(parts) == 3:
        kind = parts[2]
        if kind == "SWAP":
            return make_symbol(parts[0], parts[1], "PERP")
        if len(kind) == 6 and kind.isascii() and kind.isdigit():
            return make_symbol(parts[0], parts[1], kind)
    raise SymbolError(f"okx: {native!r} is not a spot, swap or futures instrument name")


def _unlisted(native: str) -> str:
    try:
        return symbol_of(native)
    except SymbolError as exc:
        raise ParseError(str(exc)) from None


_symbols = SymbolCache(listed_or(EXCHANGE, _unlisted))


# --- parse --------------------------------------------------------------------------------------------------


def _on_trades(arg: _Arg, data: msgspec.Raw, action: str | None, ctx: ParseContext) -> list[MarketEvent]:
    registry, recv_ts = ctx.registry, ctx.recv_ts
    return [t.to_trade(_symbols.get(registry, t.instId), recv_ts) for t in _trades_decoder.decode(data)]


def _on_tickers(arg: _Arg, data: msgspec.Raw, action: str | None, ctx: ParseContext) -> list[MarketEvent]:
    events: list[MarketEvent] = []
    for ticker in _tickers_decoder.decode(data):
        events.extend(ticker.to_quotes(_symbols.get(ctx.registry, ticker.instId), ctx.recv_ts))
    return events or _one_sided(arg)


def _on_bbo(arg: _Arg, data: msgspec.Raw, action: str | None, ctx: ParseContext) -> list[MarketEvent]:
    symbol = _symbols.get(ctx.registry, _inst_id(arg))
    events: list[MarketEvent] = []
    for bbo in _bbo_decoder.decode(data):
        events.extend(bbo.to_quotes(symbol, ctx.recv_ts))
    return events or _one_sided(arg)


def _one_sided(arg: _Arg) -> list[MarketEvent]:
    raise NotNormalized(EXCHANGE, arg.channel, "incomplete", "no quote: a side of the book is empty")


def _on_books(arg: _Arg, data: msgspec.Raw, action: str | None, ctx: ParseContext) -> list[MarketEvent]:
    symbol = _symbols.get(ctx.registry, _inst_id(arg))
    books = _books_decoder.decode(data)
    if action == "snapshot":
        return [book.to_snapshot(symbol, ctx.recv_ts) for book in books]
    if action == "update":
        return [book.to_delta(symbol, ctx.recv_ts) for book in books]
    raise ParseError(f"okx {arg.channel}: action {action!r} is neither 'snapshot' nor 'update'")


def _inst_id(arg: _Arg) -> str:
    if not arg.instId:
        raise ParseError(f"okx {arg.channel}: push without arg.instId")
    return arg.instId


_Handler = Callable[[_Arg, msgspec.Raw, "str | None", ParseContext], list[MarketEvent]]
_HANDLERS: dict[str, _Handler] = {
    "trades": _on_trades,
    "trades-all": _on_trades,
    "tickers": _on_tickers,
    "bbo-tbt": _on_bbo,
    "books": _on_books,
    "books-l2-tbt": _on_books,
    "books50-l2-tbt": _on_books,
}


def parse(frame: str | bytes, ctx: ParseContext) -> list[MarketEvent]:
    if frame == (PONG if isinstance(frame, str) else b"pong"):
        return _no_events(PONG)  # the answer to our keep-alive "ping": plain text
    try:
        envelope = _envelope_decoder.decode(frame)
        arg = envelope.arg
        if arg is None or envelope.event is not None:
            return _event(envelope)
        handler = _HANDLERS.get(arg.channel)
        if handler is None:
            return _no_events(arg.channel)  # candles and other channels: NotNormalized
        if envelope.data is NO_DATA:
            raise ParseError(f"okx {arg.channel}: push without data")
        return handler(arg, envelope.data, envelope.action, ctx)
    except DECODE_ERRORS as exc:
        raise ParseError(f"okx: malformed frame: {exc}") from exc


def _event(envelope: _Envelope) -> list[MarketEvent]:
    if envelope.event == "error":
        raise ParseError(f"okx error {envelope.code}: {envelope.msg}")
    if envelope.event is None:
        raise ParseError("okx: neither a channel push (arg) nor an event")
    return _no_events(envelope.event)  # subscribe/unsubscribe acks, notice, channel-conn-count


# --- subscriptions, instruments -----------------------------------------------------------------------------


def _request(op: str, natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    args = [{"channel": CHANNELS[channel], "instId": native} for channel in channels for native in natives]
    return [_encoder.encode({"op": op, "args": args}).decode()] if args else []


def subscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _request("subscribe", natives, channels)


def unsubscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _request("unsubscribe", natives, channels)


_KINDS: dict[str, InstrumentKind] = {"SPOT": "spot", "SWAP": "perpetual", "FUTURES": "future"}


def _instrument(item: _Listed) -> Instrument | None:
    kind = _KINDS.get(item.instType)
    if kind is None:
        return None  # OPTION (and MARGIN, which repeats the spot names) are not normalized
    if kind == "spot":
        base, quote, suffix = item.baseCcy, item.quoteCcy, ""
    else:
        base, _, quote = (item.uly or item.instFamily).partition("-")
        suffix = "PERP" if kind == "perpetual" else item.instId.rpartition("-")[2]
        if kind == "future" and not (len(suffix) == 6 and suffix.isascii() and suffix.isdigit()):
            return None
    return listed_instrument(EXCHANGE, item.instId, base, quote, kind, suffix)


def parse_instruments(body: bytes) -> list[Instrument]:
    """``GET /api/v5/public/instruments?instType=...`` (any of SPOT, SWAP, FUTURES; OPTION gives nothing).

    Spot names come from ``baseCcy``/``quoteCcy``; swaps and futures from the underlying ``uly`` (``BTC-USD``,
    ``instFamily`` on newer listings), with ``PERP`` or the ``YYMMDD`` expiry of the instrument id as suffix.
    An instrument whose asset codes are not plain letters/digits cannot be named and is left out."""
    listing = decode(_listing_decoder, body, "okx instruments")
    if str(listing.code) != "0":
        raise ParseError(f"okx instruments: error {listing.code}: {listing.msg}")
    return [instrument for item in listing.data if (instrument := _instrument(item)) is not None]


def native_symbol(symbol: str, registry: InstrumentRegistry) -> str:
    """OKX names need the listing: ``BTCUSDT`` cannot be split into ``BTC-USDT`` without it."""
    return registry.by_symbol(EXCHANGE, symbol).native


SPEC = ExchangeSpec(
    name=EXCHANGE,
    ws_url=WS_URL,
    rest_url=REST_URL,
    subscribe=subscribe,
    unsubscribe=unsubscribe,
    parse=parse,
    instruments_path=INSTRUMENTS_PATH,
    parse_instruments=parse_instruments,
    native_symbol=native_symbol,
    book_sequence=book_sequence,
    book_checksum=book_checksum,
    book_checksum_depth=CHECKSUM_DEPTH,
    book_resync="resubscribe",
    contiguous_trade_ids=False,
    keepalive_frame=KEEPALIVE_FRAME,
    keepalive_interval_s=20.0,
    protocol_chatter=PROTOCOL_CHATTER,
)
