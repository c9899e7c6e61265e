"""Binance spot: combined WebSocket streams, the REST depth snapshot and the ``exchangeInfo`` listing.

Every frame on ``/stream`` is an envelope ``{"stream": "<symbol>@<channel>", "data": {...}}``; the channel is the
part after the first ``@`` and picks the handler:

- ``trade`` (id ``t``) and ``aggTrade`` (id ``a``) -> :class:`Trade`. ``m`` says the buyer was the maker, so the
  taker sold: ``m=true`` -> side ``"sell"``. Trade time ``T`` (ms) is the event time.
- ``bookTicker`` -> :class:`Quote` with ``seq=u``. Spot book tickers carry no event time: ``ts`` is the receipt
  time (where a time ``E`` is present, as on the futures streams, it is used).
- ``depth@100ms`` / ``depth`` (``depthUpdate``) -> :class:`BookDelta` covering update ids ``U``..``u``.
- anything else (``kline_1m``, ...) parses to ``[]``; so do replies ``{"result": null, "id": N}``. Error replies
  ``{"error": {"code", "msg"}}`` raise :class:`ParseError` carrying Binance's message.

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

from market_ingestor.errors import ParseError, SymbolError
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext
from market_ingestor.instruments import Instrument, InstrumentRegistry, normalize_asset
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

Levels = tuple[Level, ...]
_NO_DATA = msgspec.Raw()


# --- wire formats -------------------------------------------------------------------------------------------

# Wire structs hold only strings, numbers and tuples/lists of them: they cannot form reference cycles, so they
# are not tracked by the garbage collector (gc=False), which makes the many short-lived ones cheaper.


class _ErrorBody(msgspec.Struct, frozen=True, gc=False):
    code: int | None = None
    msg: str = ""


class _Envelope(msgspec.Struct, frozen=True, gc=False):
    """A combined-stream event, or a reply to a request (``result``/``error`` with the request ``id``)."""

    stream: str | None = None
    data: msgspec.Raw = _NO_DATA
    id: int | str | None = None
    error: _ErrorBody | None = None


class BinanceTrade(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@trade``: one trade; ``m`` = the buyer is the maker."""

    s: str
    t: int
    p: Decimal
    q: Decimal
    T: int
    m: bool

    def to_trade(self, symbol: str, recv_ts: int) -> Trade:
        _check_trade(self.p, self.q)
        side: Side = "sell" if self.m else "buy"
        return Trade(EXCHANGE, symbol, str(self.t), self.p, self.q, side, self.T * 1_000_000, recv_ts)


class BinanceAggTrade(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@aggTrade``: trades of one taker order at one price, aggregated under id ``a``."""

    s: str
    a: int
    p: Decimal
    q: Decimal
    T: int
    m: bool

    def to_trade(self, symbol: str, recv_ts: int) -> Trade:
        _check_trade(self.p, self.q)
        side: Side = "sell" if self.m else "buy"
        return Trade(EXCHANGE, symbol, str(self.a), self.p, self.q, side, self.T * 1_000_000, recv_ts)


class BinanceBookTicker(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@bookTicker``: best bid/ask; ``u`` is the order book update id."""

    u: int
    s: str
    b: Decimal
    B: Decimal
    a: Decimal
    A: Decimal
    E: int | None = None  # spot sends none; futures do

    def to_quote(self, symbol: str, recv_ts: int) -> Quote:
        if not _quote_numbers_ok(self.b, self.B, self.a, self.A):
            raise ParseError("binance bookTicker: prices and sizes must be finite and not negative")
        ts = recv_ts if self.E is None else self.E * 1_000_000
        return Quote(EXCHANGE, symbol, self.b, self.B, self.a, self.A, ts, recv_ts, self.u)


class BinanceDepthUpdate(msgspec.Struct, frozen=True, gc=False):
    """``<symbol>@depth@100ms``: changed levels for update ids ``U``..``u`` (quantity 0 removes a level)."""

    E: int
    s: str
    U: int
    u: int
    b: Levels
    a: Levels

    def to_delta(self, symbol: str, recv_ts: int) -> BookDelta:
        if self.u < self.U:
            raise ParseError(f"binance depthUpdate: first update id U={self.U} is after last u={self.u}")
        if not (_levels_ok(self.b) and _levels_ok(self.a)):
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


# --- checks -------------------------------------------------------------------------------------------------


def _check_trade(price: Decimal, qty: Decimal) -> None:
    if not (price.is_finite() and qty.is_finite() and price > 0 and qty > 0):
        raise ParseError(f"binance trade: price {price} and quantity {qty} must be positive numbers")


def _quote_numbers_ok(*values: Decimal) -> bool:
    return all(value.is_finite() and value >= 0 for value in values)


def _levels_ok(levels: Levels) -> bool:
    return all(p.is_finite() and q.is_finite() and p > 0 and q >= 0 for p, q in levels)


# --- symbols ------------------------------------------------------------------------------------------------


class _SymbolCache:
    """native name -> normalized symbol, remembered per registry (bounded: the input is untrusted)."""

    __slots__ = ("_names", "_registry", "_size")
    LIMIT = 4096

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._registry: InstrumentRegistry | None = None
        self._size = -1

    def get(self, registry: InstrumentRegistry, native: str) -> str:
        if registry is not self._registry or len(registry) != self._size:
            self._names.clear()
            self._registry, self._size = registry, len(registry)
        symbol = self._names.get(native)
        if symbol is None:
            symbol = _normalize(registry, native)
            if len(self._names) >= self.LIMIT:
                self._names.clear()
            self._names[native] = symbol
        return symbol


def _normalize(registry: InstrumentRegistry, native: str) -> str:
    """The registry's symbol when it lists the name; else the name itself: Binance spot names are BASEQUOTE."""
    try:
        return registry.by_native(EXCHANGE, native).symbol
    except SymbolError:
        pass
    if not (native.isascii() and native.isalnum() and len(native) <= 40):
        raise ParseError(f"binance: {native!r} is not a symbol name")
    return native.upper()


_symbols = _SymbolCache()


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
            return []  # klines and other streams we do not normalize
        if envelope.data is _NO_DATA:
            raise ParseError(f"binance: stream {stream!r} frame without data")
        return handler(envelope.data, ctx)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"binance: malformed frame: {exc}") from exc


def _reply(envelope: _Envelope) -> list[MarketEvent]:
    if envelope.error is not None:
        error = envelope.error
        raise ParseError(f"binance error reply to request {envelope.id!r}: code {error.code}: {error.msg}")
    if envelope.id is None:
        raise ParseError("binance: neither a stream event nor a reply to a request")
    return []  # {"result": null, "id": N}: a SUBSCRIBE/UNSUBSCRIBE acknowledgement


def parse_book_snapshot(body: bytes, symbol: str, recv_ts: int) -> BookSnapshot:
    """The REST depth snapshot; it carries no time, so ``ts`` is the receipt time."""
    try:
        snapshot = _snapshot_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"binance depth snapshot: {exc}") from exc
    if not (_levels_ok(snapshot.bids) and _levels_ok(snapshot.asks)):
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
        _encoder.encode({"method": method, "params": params[i : i + MAX_STREAMS_PER_CONNECTION], "id": n}).decode()
        for n, i in enumerate(range(0, len(params), MAX_STREAMS_PER_CONNECTION), 1)
    ]


def subscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("SUBSCRIBE", natives, channels)


def unsubscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("UNSUBSCRIBE", natives, channels)


def parse_instruments(body: bytes) -> list[Instrument]:
    """``GET /api/v3/exchangeInfo`` -> every listed symbol, whatever its status (frames of halted symbols still
    need a name). A symbol whose asset codes are not plain letters/digits cannot be named and is left out."""
    try:
        info = _exchange_info_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise ParseError(f"binance exchangeInfo: {exc}") from exc
    instruments = []
    for item in info.symbols:
        try:
            base, quote = normalize_asset(item.baseAsset), normalize_asset(item.quoteAsset)
        except SymbolError:
            continue
        instruments.append(Instrument(EXCHANGE, item.symbol, base, quote))
    return instruments


def native_symbol(symbol: str, registry: InstrumentRegistry) -> str:
    """Binance's spot name is the normalized symbol itself (upper case in REST, lower case in stream names)."""
    try:
        return registry.by_symbol(EXCHANGE, symbol).native
    except SymbolError:
        if symbol.isascii() and symbol.isalnum():
            return symbol.upper()
        raise


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
)
