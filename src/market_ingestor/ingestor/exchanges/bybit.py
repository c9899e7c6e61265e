"""Bybit v5 public streams (spot by default; :func:`spec_for` builds the USDT/USDC ``linear`` variant).

Every push is ``{"topic": ..., "type": "snapshot"|"delta", "ts": <ms>, "data": ..., "cts": <ms>}``; the topic's
channel (everything before the last ``.``, the symbol follows it) picks the handler:

- ``publicTrade.{symbol}``: ``data`` is a list of trades (``T`` ms, ``s``, ``S`` = the taker's side ``Buy``/``Sell``,
  ``v`` size, ``p`` price, ``i`` trade id, ``BT`` block trade) -> one :class:`Trade` each. Trade ids are strings
  and not contiguous.
- ``orderbook.1.{symbol}`` -> :class:`Quote` (``seq=u``). We subscribe it for ``Channel.QUOTES``: spot tickers
  carry no best bid/ask, and every level-1 push holds the whole top of book. A level-1 frame without exactly one
  bid and one ask level cannot make a complete quote and raises :class:`ParseError` (dead-lettered, not guessed).
- ``orderbook.50.{symbol}`` (``Channel.BOOK``; ``200`` and ``1000`` parse the same way) -> :class:`BookSnapshot`
  for ``type: snapshot`` (it resets the book; ``u=1`` after a service restart too) and :class:`BookDelta` for
  ``type: delta`` with ``first_seq = last_seq = u``: the update id counts up by one per push, so a delta continues
  the book when ``u == last + 1``; on a gap the book is resubscribed (Bybit sends a fresh snapshot). ``seq`` is the
  cross sequence across topics, not a book sequence. No checksum.
- other topics (``tickers``, ``kline``, ..., and the retired v2 API's ``trade.X`` / ``orderBookL2_25.X``) raise
  :class:`NotNormalized` naming the topic's channel: counted and dead-lettered, never dropped silently.

The exchange time of book frames is ``cts`` (matching engine, comparable with the trades' ``T``) when sent, else
``ts``. Replies to the ops in ``PROTOCOL_CHATTER`` (subscribe/unsubscribe acks and pongs: ``{"success": true,
"ret_msg": "pong"|"", "op": ...}``, the option pong ``{"op": "pong", "args": [...]}``, and v2's form with the op
under ``request``) are the only protocol chatter and parse to ``[]``; ``success: false`` raises
:class:`ParseError` with Bybit's ``ret_msg``; a reply to another op raises :class:`NotNormalized`.

Keep-alive: the client sends ``{"op":"ping"}`` every 20 s. Spot takes at most 10 topics per subscribe request, so
requests are split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import msgspec

from market_ingestor.errors import ParseError
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext, ParseFn
from market_ingestor.ingestor.exchanges.wire import (
    DECODE_ERRORS,
    NO_DATA,
    EpochMs,
    SymbolCache,
    batches,
    chatter_or_unhandled,
    check_trade,
    decode,
    levels_ok,
    listed_instrument,
    listed_or,
    plain_name,
    plain_native_symbol,
)
from market_ingestor.instruments import Instrument, InstrumentKind, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, Level, MarketEvent, Quote, Side, Trade

EXCHANGE = "bybit"
Category = Literal["spot", "linear"]
WS_URLS: dict[Category, str] = {
    "spot": "wss://stream.bybit.com/v5/public/spot",
    "linear": "wss://stream.bybit.com/v5/public/linear",
}
REST_URL = "https://api.bybit.com"
MAX_ARGS_PER_REQUEST = 10  # spot refuses a subscribe request with more topics
# A public connection's topics may total 21,000 characters; 100 symbols x 3 topics (~25 characters each) is far below.
MAX_SYMBOLS_PER_CONNECTION = 100
KEEPALIVE_FRAME = '{"op":"ping"}'
BOOK_DEPTH = 50

# Our channels -> topic prefixes (the symbol follows after a dot).
TOPICS: dict[Channel, str] = {
    Channel.TRADES: "publicTrade",
    Channel.QUOTES: "orderbook.1",
    Channel.BOOK: f"orderbook.{BOOK_DEPTH}",
}

# Protocol chatter, parsed to [] without a word: successful replies to these ops (acks; "ping" is answered by a
# reply with ret_msg "pong", the option endpoints reply with op "pong").
PROTOCOL_CHATTER: frozenset[str] = frozenset({"subscribe", "unsubscribe", "ping", "pong"})
_no_events = chatter_or_unhandled(EXCHANGE, PROTOCOL_CHATTER)

Levels = tuple[Level, ...]
_SIDES: dict[str, Side] = {"Buy": "buy", "Sell": "sell"}


# --- wire formats -------------------------------------------------------------------------------------------

# Wire structs hold only strings, numbers and tuples/lists of them: they cannot form reference cycles, so they
# are not tracked by the garbage collector (gc=False), which makes the many short-lived ones cheaper.


class _Request(msgspec.Struct, frozen=True, gc=False):
    op: str = ""


class _Envelope(msgspec.Struct, frozen=True, gc=False):
    """A topic push, or a reply to an op (``success``, ``ret_msg``, ``op``; v2 replies echo the ``request``)."""

    topic: str | None = None
    type: str = ""
    ts: EpochMs | None = None
    data: msgspec.Raw = NO_DATA
    cts: EpochMs | None = None
    success: bool | None = None
    ret_msg: str = ""
    op: str = ""
    request: _Request | None = None


class BybitTrade(msgspec.Struct, frozen=True, gc=False):
    """One element of a ``publicTrade`` push; ``S`` is the taker's side."""

    T: EpochMs
    s: str
    S: str
    v: Decimal
    p: Decimal
    i: str
    BT: bool = False

    def to_trade(self, symbol: str, recv_ts: int) -> Trade:
        side = _SIDES.get(self.S)
        if side is None:
            raise ParseError(f"bybit publicTrade: taker side {self.S!r} is neither Buy nor Sell")
        check_trade("bybit publicTrade", self.p, self.v)
        return Trade(EXCHANGE, symbol, self.i, self.p, self.v, side, self.T * 1_000_000, recv_ts)


class BybitBook(msgspec.Struct, frozen=True, gc=False):
    """``data`` of an ``orderbook.{depth}`` push: update id ``u``, cross sequence ``seq``."""

    s: str
    b: Levels
    a: Levels
    u: int
    seq: int | None = None


class _Instrument(msgspec.Struct, frozen=True, gc=False):
    symbol: str
    baseCoin: str
    quoteCoin: str
    status: str = ""
    contractType: str = ""  # linear/inverse only
    deliveryTime: str = "0"  # ms; "0" for perpetuals


class _InstrumentsResult(msgspec.Struct, frozen=True, gc=False):
    category: str = ""
    items: list[_Instrument] = msgspec.field(name="list", default_factory=list)


class _InstrumentsBody(msgspec.Struct, frozen=True, gc=False):
    retCode: int
    retMsg: str = ""
    result: _InstrumentsResult = _InstrumentsResult()


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_trades_decoder = msgspec.json.Decoder(list[BybitTrade])
_book_decoder = msgspec.json.Decoder(BybitBook)
_instruments_decoder = msgspec.json.Decoder(_InstrumentsBody)
_encoder = msgspec.json.Encoder()


# --- symbols ------------------------------------------------------------------------------------------------


def _listed_only(native: str) -> str:
    """Linear names (BTCUSDT perpetual, BTCPERP for USDC, BTC-27DEC24 futures) need the listing to be named."""
    raise ParseError(f"bybit: {native!r} is not in the linear instrument listing; load the listing first")


# Names missing from the listing: spot names are BASEQUOTE already; linear ones cannot be named without it.
_FALLBACKS: dict[Category, Callable[[str], str]] = {
    "spot": plain_name(EXCHANGE, "spot symbol name"),
    "linear": _listed_only,
}


# --- parse --------------------------------------------------------------------------------------------------

Handler = Callable[[_Envelope, SymbolCache, ParseContext], list[MarketEvent]]


def _exchange_ts(envelope: _Envelope) -> int:
    ms = envelope.cts if envelope.cts is not None else envelope.ts
    if ms is None:
        raise ParseError(f"bybit: {envelope.topic} push without a timestamp")
    return ms * 1_000_000


def _on_trades(envelope: _Envelope, symbols: SymbolCache, ctx: ParseContext) -> list[MarketEvent]:
    registry, recv_ts = ctx.registry, ctx.recv_ts
    return [trade.to_trade(symbols.get(registry, trade.s), recv_ts) for trade in _trades_decoder.decode(envelope.data)]


def _on_top_of_book(envelope: _Envelope, symbols: SymbolCache, ctx: ParseContext) -> list[MarketEvent]:
    book = _book_decoder.decode(envelope.data)
    if len(book.b) != 1 or len(book.a) != 1:
        raise ParseError(
            f"bybit orderbook.1: {len(book.b)} bid and {len(book.a)} ask levels, a quote needs exactly one of each"
        )
    (bid, bid_qty), (ask, ask_qty) = book.b[0], book.a[0]
    if not (levels_ok(book.b) and levels_ok(book.a)):
        raise ParseError("bybit orderbook.1: a level has a non-positive price or a negative size")
    symbol = symbols.get(ctx.registry, book.s)
    return [Quote(EXCHANGE, symbol, bid, bid_qty, ask, ask_qty, _exchange_ts(envelope), ctx.recv_ts, book.u)]


def _on_book(envelope: _Envelope, symbols: SymbolCache, ctx: ParseContext) -> list[MarketEvent]:
    book = _book_decoder.decode(envelope.data)
    if not (levels_ok(book.b) and levels_ok(book.a)):
        raise ParseError(f"bybit {envelope.topic}: a level has a non-positive price or a negative size")
    symbol, ts = symbols.get(ctx.registry, book.s), _exchange_ts(envelope)
    if envelope.type == "delta":
        return [BookDelta(EXCHANGE, symbol, book.b, book.a, book.u, book.u, ts, ctx.recv_ts)]
    if envelope.type == "snapshot":
        return [BookSnapshot(EXCHANGE, symbol, book.b, book.a, book.u, ts, ctx.recv_ts)]
    raise ParseError(f"bybit {envelope.topic}: type {envelope.type!r} is neither snapshot nor delta")


_HANDLERS: dict[str, Handler] = {
    "publicTrade": _on_trades,
    "orderbook.1": _on_top_of_book,
    "orderbook.50": _on_book,
    "orderbook.200": _on_book,
    "orderbook.1000": _on_book,
}


def _reply(envelope: _Envelope) -> list[MarketEvent]:
    op = envelope.op or (envelope.request.op if envelope.request is not None else "")
    if envelope.success is False:
        raise ParseError(f"bybit refused {op or 'a request'}: {envelope.ret_msg}")
    if envelope.success is None and op != "pong":
        raise ParseError("bybit: neither a topic push nor a reply to an op")
    return _no_events(op or "reply")  # subscribe/unsubscribe acks and pongs; NotNormalized for other replies


def make_parse(category: Category) -> ParseFn:
    """The frame parser; categories differ only in how names missing from the listing are treated."""
    symbols = SymbolCache(listed_or(EXCHANGE, _FALLBACKS[category]))

    def parse(frame: str | bytes, ctx: ParseContext) -> list[MarketEvent]:
        try:
            envelope = _envelope_decoder.decode(frame)
            topic = envelope.topic
            if topic is None:
                return _reply(envelope)
            channel = topic.rpartition(".")[0]
            handler = _HANDLERS.get(channel)
            if handler is None:
                return _no_events(channel or topic)  # tickers, klines, v2 topics: NotNormalized
            if envelope.data is NO_DATA:
                raise ParseError(f"bybit: {topic} push without data")
            return handler(envelope, symbols, ctx)
        except DECODE_ERRORS as exc:
            raise ParseError(f"bybit: malformed frame: {exc}") from exc

    return parse


parse = make_parse("spot")


def book_sequence(last_seq: int, delta: BookDelta) -> bool:
    """Update ids count up by one per push."""
    return delta.last_seq == last_seq + 1


# --- subscriptions, instruments -----------------------------------------------------------------------------


def _requests(op: str, natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    args = [f"{TOPICS[channel]}.{native.upper()}" for native in natives for channel in channels]
    return [
        _encoder.encode({"op": op, "args": batch, "req_id": f"{op}-{n}"}).decode()
        for n, batch in batches(args, MAX_ARGS_PER_REQUEST)
    ]


def subscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("subscribe", natives, channels)


def unsubscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("unsubscribe", natives, channels)


_KINDS: dict[str, tuple[InstrumentKind, bool]] = {  # contractType -> (kind, dated)
    "": ("spot", False),
    "LinearPerpetual": ("perpetual", False),
    "InversePerpetual": ("perpetual", False),
    "LinearFutures": ("future", True),
    "InverseFutures": ("future", True),
}


def _expiry(delivery_ms: str) -> str:
    """Delivery time (ms, as text) -> YYMMDD in UTC, with integer arithmetic."""
    try:
        if not (delivery_ms.isascii() and delivery_ms.isdigit()) or int(delivery_ms) == 0:
            raise ValueError("no delivery time")
        return datetime.fromtimestamp(int(delivery_ms) // 1000, UTC).strftime("%y%m%d")
    except (ValueError, OverflowError, OSError) as exc:
        raise ParseError(f"bybit instruments: dated future with delivery time {delivery_ms!r}: {exc}") from exc


def parse_instruments(body: bytes) -> list[Instrument]:
    """``GET /v5/market/instruments-info?category=...`` -> instruments (spot; linear perpetuals get the suffix
    ``PERP``, dated futures their delivery date). Instruments of an unknown contract type or whose coin codes are
    not plain letters/digits are left out."""
    response = decode(_instruments_decoder, body, "bybit instruments-info")
    if response.retCode != 0:
        raise ParseError(f"bybit instruments-info: retCode {response.retCode}: {response.retMsg}")
    instruments = []
    for item in response.result.items:
        kind_dated = _KINDS.get(item.contractType)
        if kind_dated is None:
            continue
        kind, dated = kind_dated
        suffix = _expiry(item.deliveryTime) if dated else ("PERP" if kind == "perpetual" else "")
        instrument = listed_instrument(EXCHANGE, item.symbol, item.baseCoin, item.quoteCoin, kind, suffix)
        if instrument is not None:
            instruments.append(instrument)
    return instruments


def native_symbol(symbol: str, registry: InstrumentRegistry) -> str:
    """From the listing; without it a spot symbol is its own native name."""
    return plain_native_symbol(EXCHANGE, symbol, registry)


def spec_for(category: Category) -> ExchangeSpec:
    """Spot (``SPEC``) or linear. The linear listing is read as one page of up to 1000 instruments."""
    return ExchangeSpec(
        name=EXCHANGE,
        ws_url=WS_URLS[category],
        rest_url=REST_URL,
        subscribe=subscribe,
        unsubscribe=unsubscribe,
        parse=parse if category == "spot" else make_parse(category),
        instruments_path=f"/v5/market/instruments-info?category={category}"
        + ("&limit=1000" if category == "linear" else ""),
        parse_instruments=parse_instruments,
        native_symbol=native_symbol,
        book_sequence=book_sequence,
        book_resync="resubscribe",
        keepalive_frame=KEEPALIVE_FRAME,
        keepalive_interval_s=20.0,
        max_symbols_per_connection=MAX_SYMBOLS_PER_CONNECTION,
        protocol_chatter=PROTOCOL_CHATTER,
    )


SPEC = spec_for("spot")
