"""Bybit v5 public spot, server side: topic pushes, op replies (subscribe acks, pongs, refusals) and the
``instruments-info`` listing.

Trades go out as one ``publicTrade`` push holding up to 1024 trades; quotes as ``orderbook.1`` snapshots; books as
``orderbook.50`` snapshots (the top 50 levels) and deltas. Bybit's update id ``u`` counts up by one per push, so
a delta is rendered with ``u = last_seq``: the market should give Bybit deltas one update id each
(``first_seq == last_seq``), and a gap fault shows as a skipped ``u``. ``seq`` (the cross sequence) is rendered
equal to ``u``. Bybit answers WebSocket requests itself, so every reply carries a connection id.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.ingestor.exchanges.bybit import BOOK_DEPTH, MAX_ARGS_PER_REQUEST
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

CONN_ID = "d1f5a2c8-5b0e-4c1e-9f3a-7c2b6e8d4a10"
MAX_TRADES_PER_PUSH = 1024

# Topic prefixes (before ".{symbol}") -> our channels; tickers and klines are valid topics the simulator does not
# feed.
_CHANNELS: dict[str, Channel] = {
    "publicTrade": Channel.TRADES,
    "orderbook.1": Channel.QUOTES,
    "orderbook.50": Channel.BOOK,
    "orderbook.200": Channel.BOOK,
    "orderbook.1000": Channel.BOOK,
}
_UNFED = frozenset({"tickers", "kline"})


# --- server frames ------------------------------------------------------------------------------------------

# Wire structs hold only strings, numbers and tuples/lists of them: they cannot form reference cycles, so they
# are not tracked by the garbage collector (gc=False), which makes the many short-lived ones cheaper.


class _Trade(msgspec.Struct, frozen=True, gc=False):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str
    BT: bool
    RPI: bool
    seq: int


class _TradePush(msgspec.Struct, frozen=True, gc=False):
    topic: str
    ts: int
    type: str
    data: list[_Trade]


class _Book(msgspec.Struct, frozen=True, gc=False):
    s: str
    b: list[TextLevel]
    a: list[TextLevel]
    u: int
    seq: int


class _BookPush(msgspec.Struct, frozen=True, gc=False):
    topic: str
    type: str
    ts: int
    data: _Book
    cts: int


class _OpReply(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    success: bool
    ret_msg: str
    conn_id: str
    req_id: str | None = None
    op: str = ""


# --- client frames ------------------------------------------------------------------------------------------


class _Request(msgspec.Struct, frozen=True, gc=False):
    op: str
    args: list[str] = []
    req_id: str | None = None


_request_decoder = msgspec.json.Decoder(_Request)
_SIDES = {"buy": "Buy", "sell": "Sell"}


def native(instrument: SimInstrument) -> str:
    return f"{instrument.base}{instrument.quote}".upper()


def render_trades(native_symbol: str, trades: Sequence[SimTrade]) -> list[str]:
    symbol = native_symbol.upper()
    topic = f"publicTrade.{symbol}"
    rendered = [
        _Trade(
            ms(t.ts_ns),
            symbol,
            _SIDES[t.side],
            format(t.qty, "f"),
            format(t.price, "f"),
            str(t.trade_id),
            False,
            False,
            t.trade_id,
        )
        for t in trades
    ]
    return [
        encode(_TradePush(topic, batch[-1].T, "snapshot", batch)).decode()
        for batch in (rendered[i : i + MAX_TRADES_PER_PUSH] for i in range(0, len(rendered), MAX_TRADES_PER_PUSH))
    ]


def _book_push(topic: str, kind: str, book: _Book, ts_ns: int) -> str:
    return encode(_BookPush(topic, kind, ms(ts_ns), book, ms(ts_ns))).decode()


def render_quote(native_symbol: str, quote: SimQuote) -> str:
    symbol = native_symbol.upper()
    book = _Book(
        symbol,
        [(text(quote.bid_price), text(quote.bid_qty))],
        [(text(quote.ask_price), text(quote.ask_qty))],
        quote.seq,
        quote.seq,
    )
    return _book_push(f"orderbook.1.{symbol}", "snapshot", book, quote.ts_ns)


def render_book_snapshot(native_symbol: str, book: SimBook) -> str:
    symbol = native_symbol.upper()
    data = _Book(symbol, text_levels(book.bids, BOOK_DEPTH), text_levels(book.asks, BOOK_DEPTH), book.seq, book.seq)
    return _book_push(f"orderbook.{BOOK_DEPTH}.{symbol}", "snapshot", data, book.ts_ns)


def render_book_delta(native_symbol: str, delta: SimBookDelta) -> str:
    symbol = native_symbol.upper()
    data = _Book(symbol, text_levels(delta.bids), text_levels(delta.asks), delta.last_seq, delta.last_seq)
    return _book_push(f"orderbook.{BOOK_DEPTH}.{symbol}", "delta", data, delta.ts_ns)


def render_instruments(instruments: Sequence[SimInstrument]) -> bytes:
    """``GET /v5/market/instruments-info?category=spot``."""
    listed = [
        {
            "symbol": native(item),
            "baseCoin": item.base,
            "quoteCoin": item.quote,
            "innovation": "0",
            "status": "Trading",
            "marginTrading": "none",
            "stTag": "0",
            "lotSizeFilter": {
                "basePrecision": text(item.lot),
                "quotePrecision": text(item.tick),
                "minOrderQty": text(item.lot),
                "maxOrderQty": "10000000",
                "minOrderAmt": "1",
                "maxOrderAmt": "2000000",
            },
            "priceFilter": {"tickSize": text(item.tick)},
            "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.05"},
        }
        for item in instruments
    ]
    return encode({"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": listed}, "retExtInfo": {}})


# --- client requests ----------------------------------------------------------------------------------------


def _reply(success: bool, ret_msg: str, op: str, req_id: str | None) -> str:
    return encode(_OpReply(success, ret_msg, CONN_ID, req_id, op)).decode()


def _refuse(ret_msg: str, op: str = "", req_id: str | None = "") -> ClientRequest:
    return refusal(_reply(False, ret_msg, op, req_id))


def parse_client_frame(frame: str) -> ClientRequest:
    try:
        request = _request_decoder.decode(frame)
    except msgspec.MsgspecError:
        return _refuse('error:invalid request, expected {"op":...,"args":[...]}')
    op, req_id = request.op, request.req_id
    if op == "ping":
        return ClientRequest("ping", replies=(_reply(True, "pong", "ping", req_id),))
    if op not in ("subscribe", "unsubscribe"):
        return _refuse(f"error:unknown op {op!r}", op, req_id or "")
    if len(request.args) > MAX_ARGS_PER_REQUEST:
        return _refuse(f"args size >{MAX_ARGS_PER_REQUEST}", op, req_id or "")
    subscriptions = []
    for topic in request.args:
        prefix, dot, symbol = topic.rpartition(".")
        channel = _CHANNELS.get(prefix)
        if not (dot and symbol.isascii() and symbol.isalnum()) or (
            channel is None and prefix.partition(".")[0] not in _UNFED
        ):
            return _refuse(f"Invalid topic: [{topic}]", op, req_id or "")
        if channel is not None:
            subscriptions.append((channel, symbol.upper()))
    return subscription(op == "subscribe", subscriptions, (_reply(True, op, op, req_id or ""),))


DIALECT = SimDialect(
    name="bybit",
    ws_path="/v5/public/spot",
    native=native,
    parse_client_frame=parse_client_frame,
    render_trades=render_trades,
    render_quote=render_quote,
    render_book_delta=render_book_delta,
    render_book_snapshot=render_book_snapshot,
    instruments_path="/v5/market/instruments-info",
    render_instruments=render_instruments,
)
