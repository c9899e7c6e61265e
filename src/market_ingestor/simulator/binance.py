"""Binance spot, server side: combined-stream frames, SUBSCRIBE/UNSUBSCRIBE replies, the REST depth snapshot and
``exchangeInfo``.

Binance sends one trade per frame, book tickers without an event time, depth updates as ``depthUpdate`` events
with the update id range ``U``..``u`` (no previous id on spot) and no book snapshot over the WebSocket: clients
fetch ``/api/v3/depth`` (rendered here too). Numbers travel as plain decimal strings, never exponent notation.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.ingestor.exchanges.binance import DEPTH_SNAPSHOT_LIMIT
from market_ingestor.simulator.dialect import (
    ClientRequest,
    SimBook,
    SimBookDelta,
    SimDialect,
    SimInstrument,
    SimQuote,
    SimTrade,
)
from market_ingestor.simulator.render import TextLevel, encode, ms, refusal, subscription, text, text_levels

# Binance stream names (after "<symbol>@") -> our channels. Partial-book streams (depth5, depth20) and klines are
# valid subscriptions the simulator does not feed.
_CHANNELS: dict[str, Channel] = {
    "trade": Channel.TRADES,
    "aggTrade": Channel.TRADES,
    "bookTicker": Channel.QUOTES,
    "depth": Channel.BOOK,
    "depth@100ms": Channel.BOOK,
    "depth@1000ms": Channel.BOOK,
}
_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


# --- server frames ------------------------------------------------------------------------------------------

# Wire structs hold only strings, numbers and tuples/lists of them: they cannot form reference cycles, so they
# are not tracked by the garbage collector (gc=False), which makes the many short-lived ones cheaper.


class _TradeData(msgspec.Struct, frozen=True, gc=False):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool


class _TradeFrame(msgspec.Struct, frozen=True, gc=False):
    stream: str
    data: _TradeData


class _BookTickerData(msgspec.Struct, frozen=True, gc=False):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str


class _BookTickerFrame(msgspec.Struct, frozen=True, gc=False):
    stream: str
    data: _BookTickerData


class _DepthData(msgspec.Struct, frozen=True, gc=False):
    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[TextLevel]
    a: list[TextLevel]


class _DepthFrame(msgspec.Struct, frozen=True, gc=False):
    stream: str
    data: _DepthData


class _RestDepth(msgspec.Struct, frozen=True, gc=False):
    lastUpdateId: int
    bids: list[TextLevel]
    asks: list[TextLevel]


class _ErrorBody(msgspec.Struct, frozen=True, gc=False):
    code: int
    msg: str


class _ErrorReply(msgspec.Struct, frozen=True, gc=False):
    error: _ErrorBody
    id: int | str | None


class _ResultReply(msgspec.Struct, frozen=True, gc=False):
    result: bool | list[str] | None
    id: int | str | None


# --- client frames ------------------------------------------------------------------------------------------


class _Request(msgspec.Struct, frozen=True, gc=False):
    method: str
    params: list[str | bool] = []
    id: int | str | None = None


_request_decoder = msgspec.json.Decoder(_Request)


def native(instrument: SimInstrument) -> str:
    return f"{instrument.base}{instrument.quote}".upper()


def render_trades(native_symbol: str, trades: Sequence[SimTrade]) -> list[str]:
    symbol = native_symbol.upper()
    stream = f"{native_symbol.lower()}@trade"
    return [
        encode(
            _TradeFrame(
                stream,
                _TradeData(
                    "trade",
                    ms(t.ts_ns),
                    symbol,
                    t.trade_id,
                    format(t.price, "f"),
                    format(t.qty, "f"),
                    ms(t.ts_ns),
                    t.side == "sell",  # the buyer was the maker: the taker sold
                    True,
                ),
            )
        ).decode()
        for t in trades
    ]


def render_quote(native_symbol: str, quote: SimQuote) -> str:
    data = _BookTickerData(
        quote.seq,
        native_symbol.upper(),
        text(quote.bid_price),
        text(quote.bid_qty),
        text(quote.ask_price),
        text(quote.ask_qty),
    )
    return encode(_BookTickerFrame(f"{native_symbol.lower()}@bookTicker", data)).decode()


def render_book_delta(native_symbol: str, delta: SimBookDelta) -> str:
    data = _DepthData(
        "depthUpdate",
        ms(delta.ts_ns),
        native_symbol.upper(),
        delta.first_seq,
        delta.last_seq,
        text_levels(delta.bids),
        text_levels(delta.asks),
    )
    return encode(_DepthFrame(f"{native_symbol.lower()}@depth@100ms", data)).decode()


def render_rest_book(native_symbol: str, book: SimBook) -> bytes:
    """``GET /api/v3/depth?symbol=X&limit=1000``: the top 1000 levels per side."""
    return encode(
        _RestDepth(
            book.seq,
            text_levels(book.bids, DEPTH_SNAPSHOT_LIMIT),
            text_levels(book.asks, DEPTH_SNAPSHOT_LIMIT),
        )
    )


def render_instruments(instruments: Sequence[SimInstrument]) -> bytes:
    """``GET /api/v3/exchangeInfo`` with the fields clients read plus Binance's price and lot filters."""
    symbols = [
        {
            "symbol": native(item),
            "status": "TRADING",
            "baseAsset": item.base,
            "baseAssetPrecision": 8,
            "quoteAsset": item.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": text(item.tick),
                    "maxPrice": "1000000.00000000",
                    "tickSize": text(item.tick),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": text(item.lot),
                    "maxQty": "9000000.00000000",
                    "stepSize": text(item.lot),
                },
            ],
            "permissions": ["SPOT"],
        }
        for item in instruments
    ]
    return encode({"timezone": "UTC", "rateLimits": [], "exchangeFilters": [], "symbols": symbols})


# --- client requests ----------------------------------------------------------------------------------------


def _error(code: int, msg: str, request_id: int | str | None = None) -> ClientRequest:
    return refusal(encode(_ErrorReply(_ErrorBody(code, msg), request_id)).decode())


def _result(result: bool | list[str] | None, request_id: int | str | None) -> str:
    return encode(_ResultReply(result, request_id)).decode()


def _stream(stream: str) -> tuple[bool, tuple[Channel, str] | None]:
    """A stream name -> (is it a stream name, (channel, native) when the simulator feeds that stream)."""
    symbol, at, kind = stream.partition("@")
    if not (at and kind and symbol and symbol.isascii() and symbol.isalnum()):
        return False, None
    channel = _CHANNELS.get(kind)
    return True, None if channel is None else (channel, symbol.upper())


def parse_client_frame(frame: str) -> ClientRequest:
    try:
        request = _request_decoder.decode(frame)
    except msgspec.ValidationError as exc:  # (a subclass of DecodeError)
        return _error(2, f"Invalid request: {exc}")
    except msgspec.DecodeError:
        return _error(3, "Invalid JSON: expected value at line 1 column 1")
    if request.method not in _METHODS:
        expected = ", ".join(f"`{name}`" for name in _METHODS)
        return _error(2, f"Invalid request: unknown variant `{request.method}`, expected one of {expected}", request.id)
    if request.method == "LIST_SUBSCRIPTIONS":
        return ClientRequest("ignore", replies=(_result([], request.id),))
    if request.method == "SET_PROPERTY":
        return ClientRequest("ignore", replies=(_result(None, request.id),))
    if request.method == "GET_PROPERTY":  # the only property is "combined": true on /stream
        return ClientRequest("ignore", replies=(_result(True, request.id),))
    streams = [_stream(param) if isinstance(param, str) else (False, None) for param in request.params]
    if not all(valid for valid, _ in streams):
        return _error(2, "Invalid request: invalid stream name", request.id)
    subscriptions = tuple(sub for _, sub in streams if sub is not None)
    return subscription(request.method == "SUBSCRIBE", subscriptions, (_result(None, request.id),))


def subscriptions_from_query(query: dict[str, str]) -> tuple[tuple[Channel, str], ...]:
    """``/stream?streams=btcusdt@trade/btcusdt@depth@100ms``; names that are not streams are ignored."""
    streams = (_stream(stream) for stream in query.get("streams", "").split("/"))
    return tuple(sub for _, sub in streams if sub is not None)


DIALECT = SimDialect(
    name="binance",
    ws_path="/stream",
    native=native,
    parse_client_frame=parse_client_frame,
    render_trades=render_trades,
    render_quote=render_quote,
    render_book_delta=render_book_delta,
    render_book_snapshot=None,
    instruments_path="/api/v3/exchangeInfo",
    render_instruments=render_instruments,
    rest_book_path="/api/v3/depth",
    render_rest_book=render_rest_book,
    subscriptions_from_query=subscriptions_from_query,
)
