"""OKX v5 public, server side: channel pushes, subscribe/unsubscribe acks and errors, ``ping``/``pong`` and the
``/api/v5/public/instruments`` listing.

OKX pushes one trade per ``trades`` frame, the best bid/ask on ``bbo-tbt`` (levels ``[px, sz, "0", orders]``),
and on ``books`` one snapshot (400 levels a side, ``prevSeqId`` -1) followed by updates carrying ``seqId``,
``prevSeqId`` and the CRC32 checksum of the resulting top 25 levels. Numbers are plain decimal strings.
Subscriptions to ``tickers`` are served with ``bbo-tbt`` frames: the dialect renders one quote shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.ingestor.exchanges.okx import CHECKSUM_DEPTH, KEEPALIVE_FRAME, PONG, book_checksum
from market_ingestor.simulator.dialect import (
    ClientRequest,
    Levels,
    SimBook,
    SimBookDelta,
    SimDialect,
    SimInstrument,
    SimQuote,
    SimTrade,
)
from market_ingestor.simulator.render import encode, refusal, subscription, text, top_checksum

BOOK_DEPTH = 400  # levels per side in a "books" snapshot
CONN_ID = "a4d3ae55"  # OKX names each connection with 8 hex digits; the dialect is stateless, so one fixed id

# OKX channels -> ours. Other channels (candles, books5, ...) exist but the simulator does not feed them.
_CHANNELS: dict[str, Channel] = {
    "trades": Channel.TRADES,
    "bbo-tbt": Channel.QUOTES,
    "tickers": Channel.QUOTES,
    "books": Channel.BOOK,
}

WireLevel = tuple[str, str, str, str]
_ECHO_LIMIT = 512  # OKX quotes the refused request in its error message


# --- server frames ------------------------------------------------------------------------------------------


class _Arg(msgspec.Struct, frozen=True):
    channel: str
    instId: str


class _TradeData(msgspec.Struct, frozen=True):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str
    count: str


class _TradeFrame(msgspec.Struct, frozen=True):
    arg: _Arg
    data: tuple[_TradeData]


class _BookData(msgspec.Struct, frozen=True):
    asks: list[WireLevel]
    bids: list[WireLevel]
    ts: str
    checksum: int
    prevSeqId: int
    seqId: int


class _BookFrame(msgspec.Struct, frozen=True):
    arg: _Arg
    action: str
    data: tuple[_BookData]


class _BboData(msgspec.Struct, frozen=True):
    asks: list[WireLevel]
    bids: list[WireLevel]
    ts: str
    seqId: int


class _BboFrame(msgspec.Struct, frozen=True):
    arg: _Arg
    data: tuple[_BboData]


class _Ack(msgspec.Struct, frozen=True):
    event: str
    arg: _Arg
    connId: str


class _Error(msgspec.Struct, frozen=True):
    event: str
    code: str
    msg: str
    connId: str


# --- client frames ------------------------------------------------------------------------------------------


class _RequestArg(msgspec.Struct, frozen=True):
    channel: str
    instId: str = ""


class _Request(msgspec.Struct, frozen=True):
    op: str
    args: list[_RequestArg] = []


_request_decoder = msgspec.json.Decoder(_Request)


def _wire_levels(levels: Levels, limit: int | None = None) -> list[WireLevel]:
    return [(format(p, "f"), format(q, "f"), "0", "1") for p, q in levels[:limit]]


def _ms(ts_ns: int) -> str:
    return str(ts_ns // 1_000_000)


def checksum_of(book: SimBook) -> int:
    """OKX's checksum of a book, from the same text the frames carry."""
    return top_checksum(book, CHECKSUM_DEPTH, book_checksum)


def native(instrument: SimInstrument) -> str:
    return f"{instrument.base}-{instrument.quote}".upper()


def render_trades(native_symbol: str, trades: Sequence[SimTrade]) -> list[str]:
    arg = _Arg("trades", native_symbol)
    return [
        encode(
            _TradeFrame(
                arg,
                (_TradeData(native_symbol, str(t.trade_id), text(t.price), text(t.qty), t.side, _ms(t.ts_ns), "1"),),
            )
        ).decode()
        for t in trades
    ]


def render_quote(native_symbol: str, quote: SimQuote) -> str:
    data = _BboData(
        [(text(quote.ask_price), text(quote.ask_qty), "0", "1")],
        [(text(quote.bid_price), text(quote.bid_qty), "0", "1")],
        _ms(quote.ts_ns),
        quote.seq,
    )
    return encode(_BboFrame(_Arg("bbo-tbt", native_symbol), (data,))).decode()


def render_book_snapshot(native_symbol: str, book: SimBook) -> str:
    data = _BookData(
        _wire_levels(book.asks, BOOK_DEPTH),
        _wire_levels(book.bids, BOOK_DEPTH),
        _ms(book.ts_ns),
        checksum_of(book),
        -1,
        book.seq,
    )
    return encode(_BookFrame(_Arg("books", native_symbol), "snapshot", (data,))).decode()


def render_book_delta(native_symbol: str, delta: SimBookDelta) -> str:
    data = _BookData(
        _wire_levels(delta.asks),
        _wire_levels(delta.bids),
        _ms(delta.ts_ns),
        checksum_of(delta.book),
        delta.prev_seq,
        delta.last_seq,
    )
    return encode(_BookFrame(_Arg("books", native_symbol), "update", (data,))).decode()


def render_instruments(instruments: Sequence[SimInstrument]) -> bytes:
    """``GET /api/v5/public/instruments?instType=SPOT`` with the fields OKX lists for spot instruments."""
    data = [
        {
            "alias": "",
            "baseCcy": item.base,
            "category": "1",
            "ctMult": "",
            "ctType": "",
            "ctVal": "",
            "ctValCcy": "",
            "expTime": "",
            "instFamily": "",
            "instId": native(item),
            "instType": "SPOT",
            "lever": "10",
            "listTime": "1548133413000",
            "lotSz": text(item.lot),
            "maxLmtSz": "9999999999",
            "maxMktSz": "1000000",
            "minSz": text(item.lot),
            "optType": "",
            "quoteCcy": item.quote,
            "settleCcy": "",
            "state": "live",
            "stk": "",
            "tickSz": text(item.tick),
            "uly": "",
        }
        for item in instruments
    ]
    return encode({"code": "0", "msg": "", "data": data})


# --- client requests ----------------------------------------------------------------------------------------


def _error(code: str, msg: str) -> str:
    return encode(_Error("error", code, msg, CONN_ID)).decode()


def parse_client_frame(frame: str) -> ClientRequest:
    if frame == KEEPALIVE_FRAME:
        return ClientRequest("ping", replies=(PONG,))
    try:
        request = _request_decoder.decode(frame)
    except msgspec.MsgspecError:
        return refusal(_error("60012", f"Invalid request: {frame[:_ECHO_LIMIT]}"))
    if request.op not in ("subscribe", "unsubscribe") or not request.args:
        return refusal(_error("60012", f"Invalid request: {frame[:_ECHO_LIMIT]}"))
    subscriptions: list[tuple[Channel, str]] = []
    replies: list[str] = []
    for arg in request.args:
        channel = _CHANNELS.get(arg.channel)
        if channel is None or not arg.instId:
            replies.append(_error("60018", f"Wrong URL or channel:{arg.channel},instId:{arg.instId} doesn't exist."))
            continue
        subscriptions.append((channel, arg.instId))
        replies.append(encode(_Ack(request.op, _Arg(arg.channel, arg.instId), CONN_ID)).decode())
    if not subscriptions:
        return refusal(*replies)
    return subscription(request.op == "subscribe", subscriptions, replies)


DIALECT = SimDialect(
    name="okx",
    ws_path="/ws/v5/public",
    native=native,
    parse_client_frame=parse_client_frame,
    render_trades=render_trades,
    render_quote=render_quote,
    render_book_delta=render_book_delta,
    render_book_snapshot=render_book_snapshot,
    instruments_path="/api/v5/public/instruments",
    render_instruments=render_instruments,
)
