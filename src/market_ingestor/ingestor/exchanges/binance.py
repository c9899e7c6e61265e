"""Binance spot: combined WebSocket streams, the REST depth snapshot and the ``exchangeInfo`` listing.

Every frame on ``/stream`` is an envelope ``{"stream": "<symbol>@<channel>", "data": {...}}``; the channel is the
part after the first ``@`` and picks the handler:

- ``trade`` (id ``t``) and ``aggTrade`` (id ``a``) -> :class:`Trade`. ``m`` says the buyer was the maker, so the
  taker sold: ``m=true`` -> side ``"sell"``. Trade time ``T`` (ms) is the event time.
- ``bookTicker`` -> :class:`Quote` with ``seq=u``. Spot book tickers carry no event time: ``ts`` is the receipt
  time (where a time ``E`` is present, as on the futures streams, it is used).
- ``depth@100ms`` / ``depth`` (``depthUpdate``) -> :class:`BookDelta` covering update ids ``U``..``u``.
- replies ``{"result": null, "id": N}`` (acknowledged requests) are the only protocol chatter
  (``PROTOCOL_CHATTER``) and parse to ``[]``; error replies ``{"error": {"code", "msg"}}`` raise
  :class:`ParseError` carrying Binance's message. Any other stream (``kline_1m``, ...) raises
  :class:`NotNormalized` naming the stream's channel: counted and dead-lettered, not dropped.

Book sync follows Binance's documented procedure: the REST snapshot ``GET /api/v3/depth?symbol=X&limit=1000``
gives ``lastUpdateId``; buffered deltas with ``u <= lastUpdateId`` are dropped (BookSync answers STALE), the first
applied delta has ``U <= lastUpdateId + 1 <= u`` and each later one ``U == previous u + 1``: both are
``first_seq <= last + 1 <= last_seq``. Spot sends no checksum.

Streams per connection: at most 1024, three per symbol. The server pings; the WebSocket library answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

import msgspec

from market_ingestor.errors import ParseError
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext
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
    quote_ok,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, Level, MarketEvent, Quote, Side, Trade

EXCHANGE = "binance"
WS_URL = "wss://stream.binance.com:9443/stream"
REST_URL = "https://api.binance.com"
MAX_STREAMS_PER_CONNECTION = 1024
DEPTH_SNAPSHOT_LIMIT = 1000

# Our channels -> Binance stream names (the part after "<symbol>@").
STREAMS: dict[Channel, str] = {
    Channel.TRADES: "trade",
    Channel.QUOTES: "bookTicker",
    Channel.BOOK: "depth@100ms",
}

# Protocol chatter, parsed to [] without a word: the reply to a request (SUBSCRIBE, UNSUBSCRIBE, ...). The server's
# keep-alive is WebSocket pings, which never reach the parser.
REPLY = "reply"
PROTOCOL_CHATTER: frozenset[str] = frozenset({REPLY})
_no_events = chatter_or_unhandled(EXCHANGE, PROTOCOL_CHATTER)

Levels = tuple[Level, ...]


# --- wire formats -------------------------------------------------------------------------------------------

# Wire structs hold only strings, numbers and tuples/lists of them: they cannot form reference cycles, so they
# are not tracked by the garbage collector (gc=False), which makes the many short-lived ones cheaper.


class _ErrorBody(msgspec.Struct, frozen=True, gc=False):
    code: int | None = None
    msg: str = ""


class _Envelope(msgspec.Struct, frozen=True, gc=False):
    """A combined-stream event, or a reply to a request (``result``/``error`` with the request ``id``)."""

    stream: str | None = None
    data: msgspec.Raw = NO_DATA
    id: int | str | None = None
    error: _ErrorBody | None = None


class BinanceTrade(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@trade``: one trade; ``m`` = the buyer is the maker."""

    s: str
    t: int
    p: Decimal
    q: Decimal
    T: EpochMs
    m: bool

    def to_trade(self, symbol: str, recv_ts: int) -> Trade:
        check_trade("binance trade", self.p, self.q)
        side: Side = "sell" if self.m else "buy"
        return Trade(EXCHANGE, symbol, str(self.t), self.p, self.q, side, self.T * 1_000_000, recv_ts)


class BinanceAggTrade(BinanceTrade, frozen=True, gc=False):
    """``<symbol>@aggTrade``: trades of one taker order at one price, aggregated under id ``a`` (read into ``t``)."""

    t: int = msgspec.field(name="a")


class BinanceBookTicker(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@bookTicker``: best bid/ask; ``u`` is the order book update id."""

    u: int
    s: str
    b: Decimal
    B: Decimal
    a: Decimal
    A: Decimal
    E: EpochMs | None = None  # spot sends none; futures do

    def to_quote(self, symbol: str, recv_ts: int) -> Quote:
        if not quote_ok(self.b, self.B, self.a, self.A):
            raise ParseError("binance bookTicker: prices and sizes must be finite and not negative")
        ts = recv_ts if self.E is None else self.E * 1_000_000
        return Quote(EXCHANGE, symbol, self.b, self.B, self.a, self.A, ts, recv_ts, self.u)


class BinanceDepthUpdate(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@depth@100ms``: changed levels for update ids ``U``..``u`` (quantity 0 removes a level)."""

    E: EpochMs
    s: str
    U: int
    u: int
    b: Levels
    a: Levels

    def to_delta(self, symbol: str, recv_ts: int) -> BookDelta:
        if self.u < self.U:
            raise ParseError(f"binance depthUpdate: first update id U={self.U} is after last u={self.u}")
        if not (levels_ok(self.b) and levels_ok(self.a)):
            raise ParseError("binance depthUpdate: a level has a non-positive price or a negative/non-finite size")
        return BookDelta(EXCHANGE, symbol, self.b, self.a, self.U, self.u, self.E * 1_000_000, recv_ts)


class BinanceDepthSnapshot(msgspec.Struct, frozen=True, gc=False):
    """REST ``GET /api/v3/depth``: the book as of update id ``lastUpdateId``."""

    lastUpdateId: int
    bids: Levels
    asks: Levels


class _SymbolInfo(msgspec.Struct, frozen=True, gc=False):
    symbol: str
    baseAsset: str
    quoteAsset: str
    status: str = ""


class _ExchangeInfo(msgspec.Struct, frozen=True, gc=False):
    symbols: list[_SymbolInfo]


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_trade_decoder = msgspec.json.Decoder(BinanceTrade)
_agg_trade_decoder = msgspec.json.Decoder(BinanceAggTrade)
_book_ticker_decoder = msgspec.json.Decoder(BinanceBookTicker)
_depth_decoder = msgspec.json.Decoder(BinanceDepthUpdate)
_snapshot_decoder = msgspec.json.Decoder(BinanceDepthSnapshot)
_exchange_info_decoder = msgspec.json.Decoder(_ExchangeInfo)
_encoder = msgspec.json.Encoder()

# The registry's symbol when it lists the name; else the name itself: Binance spot names are BASEQUOTE.
_symbols = SymbolCache(listed_or(EXCHANGE, plain_name(EXCHANGE)))


# --- parse --------------------------------------------------------------------------------------------------


def _on_trade(data: msgspec.Raw, ctx: ParseContext) -> list[MarketEvent]:
    trade = _trade_decoder.decode(data)
    return [trade.to_trade(_symbols.get(ctx.registry, trade.s), ctx.recv_ts)]


def _on_agg_trade(data: msgspec.Raw, ctx: ParseContext) -> list[MarketEvent]:
    trade = _agg_trade_decoder.decode(data)
    return [trade.to_trade(_symbols.get(ctx.registry, trade.s), ctx.recv_ts)]


def _on_book_ticker(data: msgspec.Raw, ctx: ParseContext) -> list[MarketEvent]:
    ticker = _book_ticker_decoder.decode(data)
    return [ticker.to_quote(_symbols.get(ctx.registry, ticker.s), ctx.recv_ts)]


def _on_depth(data: msgspec.Raw, ctx: ParseContext) -> list[MarketEvent]:
    update = _depth_decoder.decode(data)
    return [update.to_delta(_symbols.get(ctx.registry, update.s), ctx.recv_ts)]


_HANDLERS: dict[str, Callable[[msgspec.Raw, ParseContext], list[MarketEvent]]] = {
    "trade": _on_trade,
    "aggTrade": _on_agg_trade,
    "bookTicker": _on_book_ticker,
    "depth@100ms": _on_depth,
    "depth": _on_depth,
}


def parse(frame: str | bytes, ctx: ParseContext) -> list[MarketEvent]:
    try:
        envelope = _envelope_decoder.decode(frame)
        stream = envelope.stream
        if stream is None:
            return _reply(envelope)
        at = stream.find("@")
        if at < 0:
            raise ParseError(f"binance: stream name {stream!r} has no '@<channel>' part")
        handler = _HANDLERS.get(stream[at + 1 :])
        if handler is None:
            return _no_events(stream[at + 1 :])  # klines and other streams: NotNormalized
        if envelope.data is NO_DATA:
            raise ParseError(f"binance: stream {stream!r} frame without data")
        return handler(envelope.data, ctx)
    except DECODE_ERRORS as exc:
        raise ParseError(f"binance: malformed frame: {exc}") from exc


def _reply(envelope: _Envelope) -> list[MarketEvent]:
    if envelope.error is not None:
        error = envelope.error
        raise ParseError(f"binance error reply to request {envelope.id!r}: code {error.code}: {error.msg}")
    if envelope.id is None:
        raise ParseError("binance: neither a stream event nor a reply to a request")
    return _no_events(REPLY)  # {"result": null, "id": N}: a SUBSCRIBE/UNSUBSCRIBE acknowledgement


def parse_book_snapshot(body: bytes, symbol: str, recv_ts: int) -> BookSnapshot:
    """The REST depth snapshot; it carries no time, so ``ts`` is the receipt time."""
    snapshot = decode(_snapshot_decoder, body, "binance depth snapshot")
    if not (levels_ok(snapshot.bids) and levels_ok(snapshot.asks)):
        raise ParseError("binance depth snapshot: a level has a non-positive price or a negative size")
    return BookSnapshot(EXCHANGE, symbol, snapshot.bids, snapshot.asks, snapshot.lastUpdateId, recv_ts, recv_ts)


def book_snapshot_path(native: str) -> str:
    return f"/api/v3/depth?symbol={native.upper()}&limit={DEPTH_SNAPSHOT_LIMIT}"


def book_sequence(last_seq: int, delta: BookDelta) -> bool:
    """The delta covers the update right after the book's: ``U <= last + 1 <= u``."""
    first, last = delta.first_seq, delta.last_seq
    return first is not None and last is not None and first <= last_seq + 1 <= last


# --- subscriptions, instruments -----------------------------------------------------------------------------


def _requests(method: str, natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    params = [f"{native.lower()}@{STREAMS[channel]}" for native in natives for channel in channels]
    return [
        _encoder.encode({"method": method, "params": batch, "id": n}).decode()
        for n, batch in batches(params, MAX_STREAMS_PER_CONNECTION)
    ]


def subscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("SUBSCRIBE", natives, channels)


def unsubscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("UNSUBSCRIBE", natives, channels)


def parse_instruments(body: bytes) -> list[Instrument]:
    """``GET /api/v3/exchangeInfo`` -> every listed symbol, whatever its status (frames of halted symbols still
    need a name). A symbol whose asset codes are not plain letters/digits cannot be named and is left out."""
    info = decode(_exchange_info_decoder, body, "binance exchangeInfo")
    listed = (listed_instrument(EXCHANGE, item.symbol, item.baseAsset, item.quoteAsset) for item in info.symbols)
    return [instrument for instrument in listed if instrument is not None]


def native_symbol(symbol: str, registry: InstrumentRegistry) -> str:
    """Binance's spot name is the normalized symbol itself (upper case in REST, lower case in stream names)."""
    return plain_native_symbol(EXCHANGE, symbol, registry)


SPEC = ExchangeSpec(
    name=EXCHANGE,
    ws_url=WS_URL,
    rest_url=REST_URL,
    subscribe=subscribe,
    unsubscribe=unsubscribe,
    parse=parse,
    instruments_path="/api/v3/exchangeInfo",
    parse_instruments=parse_instruments,
    native_symbol=native_symbol,
    book_sequence=book_sequence,
    book_resync="rest",
    book_snapshot_path=book_snapshot_path,
    parse_book_snapshot=parse_book_snapshot,
    contiguous_trade_ids=True,
    max_symbols_per_connection=MAX_STREAMS_PER_CONNECTION // len(STREAMS),
    protocol_chatter=PROTOCOL_CHATTER,
)
