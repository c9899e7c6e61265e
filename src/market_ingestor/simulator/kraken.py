"""Kraken spot, server side: WebSocket v2 (``/v2``) frames, request replies and the ``AssetPairs`` listing.

What a v2 client sees: a ``status`` update on connect; one acknowledgement per symbol for each subscribe and
unsubscribe (``time_in``/``time_out`` are the simulator's clock); trades batched in one ``trade`` message;
``ticker`` messages (the ``bbo`` trigger: one per best bid/offer change); ``book`` snapshot and update messages,
each with the CRC32 checksum of the resulting top 10 levels per side. Prices and quantities are JSON numbers
written in plain decimal notation with all their digits (never exponent notation), as Kraken writes them.

The simulated book is rendered whole (the simulator's books are shallow; a real snapshot has the subscribed
depth), so the checksum is always that of the book the client holds. Kraken has no sequence numbers: a gap
fault shows up as a checksum mismatch, as on the real exchange. The ticker's 24-hour statistics, which the
simulator does not model, are rendered from the quote itself.

Kraken resyncs books by subscribing again, so there is no REST depth snapshot. ``AssetPairs`` is rendered in
Kraken's REST shape with v1 ``wsname`` values (``XBT/USD``), which clients fold to v2 names (``BTC/USD``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.ingestor.exchanges.kraken import CHANNELS, CHECKSUM_DEPTH, INSTRUMENTS_PATH, book_checksum
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
from market_ingestor.simulator.render import SecondTexts, encode, refusal, subscription, text, top_checksum

BOOK_DEPTHS = (10, 25, 100, 500, 1000)
EVENT_TRIGGERS = ("bbo", "trades")
_CHANNEL_OF: dict[str, Channel] = {name: channel for channel, name in CHANNELS.items()}
_UNFED_CHANNELS = frozenset({"ohlc", "instrument"})  # public channels Kraken has that the simulator does not feed
# Kraken's v1/REST asset codes: the names v2 no longer uses, and the legacy four-letter REST codes.
_V1_CODES = {"BTC": "XBT", "DOGE": "XDG"}
_REST_CODES = {
    "XBT": "XXBT",
    "XDG": "XXDG",
    "ETH": "XETH",
    "LTC": "XLTC",
    "XRP": "XXRP",
    "XLM": "XXLM",
    "XMR": "XXMR",
    "ETC": "XETC",
    "ZEC": "XZEC",
    "USD": "ZUSD",
    "EUR": "ZEUR",
    "GBP": "ZGBP",
    "JPY": "ZJPY",
    "CAD": "ZCAD",
    "AUD": "ZAUD",
}
_FEES = [[0, 0.26], [50000, 0.24], [100000, 0.22], [250000, 0.2], [500000, 0.18], [1000000, 0.16]]
_FEES_MAKER = [[0, 0.16], [50000, 0.14], [100000, 0.12], [250000, 0.1], [500000, 0.08], [1000000, 0.06]]
STATUS = (
    '{"channel":"status","data":[{"api_version":"v2","connection_id":13834774380200032777,'
    '"system":"online","version":"2.0.10"}],"type":"update"}'
)


# --- server frames ------------------------------------------------------------------------------------------


class _Trade(msgspec.Struct, frozen=True):
    symbol: str
    side: str
    price: msgspec.Raw
    qty: msgspec.Raw
    ord_type: str
    trade_id: int
    timestamp: str


class _TradeFrame(msgspec.Struct, frozen=True):
    channel: str
    type: str
    data: list[_Trade]


class _Ticker(msgspec.Struct, frozen=True):
    symbol: str
    bid: msgspec.Raw
    bid_qty: msgspec.Raw
    ask: msgspec.Raw
    ask_qty: msgspec.Raw
    last: msgspec.Raw
    volume: msgspec.Raw
    vwap: msgspec.Raw
    low: msgspec.Raw
    high: msgspec.Raw
    change: msgspec.Raw
    change_pct: msgspec.Raw
    timestamp: str


class _TickerFrame(msgspec.Struct, frozen=True):
    channel: str
    type: str
    data: list[_Ticker]


class _Level(msgspec.Struct, frozen=True):
    price: msgspec.Raw
    qty: msgspec.Raw


class _Book(msgspec.Struct, frozen=True):
    symbol: str
    bids: list[_Level]
    asks: list[_Level]
    checksum: int
    timestamp: str


class _BookFrame(msgspec.Struct, frozen=True):
    channel: str
    type: str
    data: list[_Book]


# --- client frames ------------------------------------------------------------------------------------------


class _Params(msgspec.Struct, frozen=True):
    channel: str
    symbol: list[str] = []
    depth: int | None = None
    event_trigger: str | None = None
    snapshot: bool | None = None


class _Request(msgspec.Struct, frozen=True):
    method: str
    params: _Params | None = None
    req_id: int | None = None


_request_decoder = msgspec.json.Decoder(_Request)
_ZERO = msgspec.Raw(b"0.0")


def _number(value: Decimal) -> msgspec.Raw:
    return msgspec.Raw(format(value, "f"))


_seconds = SecondTexts()


def rfc3339(ts_ns: int) -> str:
    """Kraken's timestamp text: microseconds (``2023-09-25T09:04:31.742648Z``), nanoseconds when they are set."""
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    head = _seconds[seconds]
    return f"{head}.{ns // 1000:06d}Z" if ns % 1000 == 0 else f"{head}.{ns:09d}Z"


def _levels(levels: Levels) -> list[_Level]:
    return [_Level(_number(price), _number(qty)) for price, qty in levels]


def _checksum(book: SimBook) -> int:
    return top_checksum(book, CHECKSUM_DEPTH, book_checksum)


def native(instrument: SimInstrument) -> str:
    return f"{instrument.base}/{instrument.quote}".upper()


def render_trades(native_symbol: str, trades: Sequence[SimTrade]) -> list[str]:
    """All the trades in one message, as Kraken batches the trades of one match."""
    if not trades:
        return []
    data = [
        _Trade(native_symbol, t.side, _number(t.price), _number(t.qty), "limit", t.trade_id, rfc3339(t.ts_ns))
        for t in trades
    ]
    return [encode(_TradeFrame("trade", "update", data)).decode()]


def render_quote(native_symbol: str, quote: SimQuote) -> str:
    bid, ask = _number(quote.bid_price), _number(quote.ask_price)
    ticker = _Ticker(
        native_symbol,
        bid,
        _number(quote.bid_qty),
        ask,
        _number(quote.ask_qty),
        bid,
        _ZERO,
        bid,
        bid,
        ask,
        _ZERO,
        _ZERO,
        rfc3339(quote.ts_ns),
    )
    return encode(_TickerFrame("ticker", "update", [ticker])).decode()


def render_book_snapshot(native_symbol: str, book: SimBook) -> str:
    data = _Book(native_symbol, _levels(book.bids), _levels(book.asks), _checksum(book), rfc3339(book.ts_ns))
    return encode(_BookFrame("book", "snapshot", [data])).decode()


def render_book_delta(native_symbol: str, delta: SimBookDelta) -> str:
    data = _Book(native_symbol, _levels(delta.bids), _levels(delta.asks), _checksum(delta.book), rfc3339(delta.ts_ns))
    return encode(_BookFrame("book", "update", [data])).decode()


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _asset_pair(item: SimInstrument) -> tuple[str, dict[str, Any]]:
    base, quote = _V1_CODES.get(item.base, item.base), _V1_CODES.get(item.quote, item.quote)
    altname = f"{base}{quote}"
    rest_base, rest_quote = _REST_CODES.get(base, base), _REST_CODES.get(quote, quote)
    # Pairs of two legacy assets are keyed by their REST codes (XXBTZUSD); newer ones (and XDG's) by the altname.
    legacy = base in _REST_CODES and quote in _REST_CODES and base != "XDG"
    key = rest_base + rest_quote if legacy else altname
    return key, {
        "altname": altname,
        "wsname": f"{base}/{quote}",
        "aclass_base": "currency",
        "base": rest_base,
        "aclass_quote": "currency",
        "quote": rest_quote,
        "lot": "unit",
        "cost_decimals": 5,
        "pair_decimals": _decimals(item.tick),
        "lot_decimals": _decimals(item.lot),
        "lot_multiplier": 1,
        "leverage_buy": [],
        "leverage_sell": [],
        "fees": _FEES,
        "fees_maker": _FEES_MAKER,
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": text(item.lot),
        "costmin": "0.5",
        "tick_size": text(item.tick),
        "status": "online",
    }


def render_instruments(instruments: Sequence[SimInstrument]) -> bytes:
    """``GET /0/public/AssetPairs``."""
    return encode({"error": [], "result": dict(_asset_pair(item) for item in instruments)})


# --- client requests ----------------------------------------------------------------------------------------


def _now() -> str:
    return rfc3339(time.time_ns() // 1000 * 1000)


def _reply(method: str | None, req_id: int | None, body: dict[str, Any]) -> str:
    now = _now()
    reply: dict[str, Any] = {} if method is None else {"method": method}
    reply.update(body)
    reply.update(time_in=now, time_out=now)
    if req_id is not None:
        reply["req_id"] = req_id
    return encode(reply).decode()


def _error(method: str | None, req_id: int | None, message: str, symbol: str | None = None) -> str:
    body: dict[str, Any] = {"error": message, "success": False}
    if symbol is not None:
        body["symbol"] = symbol
    return _reply(method, req_id, body)


def _invalid(method: str | None, req_id: int | None, message: str) -> ClientRequest:
    return refusal(_error(method, req_id, message))


def _pair_ok(symbol: str) -> bool:
    """v2 names are BASE/QUOTE in upper case with v2 asset codes: the v1 spellings XBT and XDG are refused, as
    Kraken refuses them."""
    base, slash, quote = symbol.partition("/")
    letters = (base + quote).replace(".", "")
    return bool(
        slash
        and base
        and quote
        and letters.isascii()
        and letters.isalnum()
        and letters == letters.upper()
        and base not in _V1_CODES.values()
        and quote not in _V1_CODES.values()
    )


def _result(method: str, params: _Params, symbol: str) -> dict[str, Any]:
    result: dict[str, Any] = {"channel": params.channel}
    if params.channel == "book":
        result["depth"] = params.depth or 10
    if method == "subscribe":
        if params.channel == "ticker":
            result["event_trigger"] = params.event_trigger or "trades"
        result["snapshot"] = True if params.snapshot is None else params.snapshot
    result["symbol"] = symbol
    return result


def _subscription(request: _Request) -> ClientRequest:
    method, params, req_id = request.method, request.params, request.req_id
    if params is None:
        return _invalid(method, req_id, "Missing params")
    channel = _CHANNEL_OF.get(params.channel)
    if channel is None and params.channel not in _UNFED_CHANNELS:
        return _invalid(method, req_id, f"Channel {params.channel} not supported")
    if not params.symbol:
        return _invalid(method, req_id, "Missing symbol")
    if params.channel == "book" and params.depth is not None and params.depth not in BOOK_DEPTHS:
        return _invalid(method, req_id, "Subscription depth not supported")
    if params.event_trigger is not None and params.event_trigger not in EVENT_TRIGGERS:
        return _invalid(method, req_id, f"Invalid event_trigger {params.event_trigger}")
    replies = []
    subscriptions = []
    accepted = False
    for symbol in params.symbol:
        if not _pair_ok(symbol):
            replies.append(_error(method, req_id, f"Currency pair not supported {symbol}", symbol))
            continue
        accepted = True
        replies.append(_reply(method, req_id, {"result": _result(method, params, symbol), "success": True}))
        if channel is not None:
            subscriptions.append((channel, symbol))
    if not accepted:
        return refusal(*replies)
    return subscription(method == "subscribe", subscriptions, replies)


def parse_client_frame(frame: str) -> ClientRequest:
    try:
        request = _request_decoder.decode(frame)
    except (msgspec.MsgspecError, UnicodeError, RecursionError):
        return _invalid(None, None, "Malformed request")
    if request.method == "ping":
        return ClientRequest("ping", replies=(_reply("pong", request.req_id, {}),))
    if request.method in ("subscribe", "unsubscribe"):
        return _subscription(request)
    return _invalid(request.method, request.req_id, f"Method {request.method} not supported")


DIALECT = SimDialect(
    name="kraken",
    ws_path="/v2",
    native=native,
    parse_client_frame=parse_client_frame,
    render_trades=render_trades,
    render_quote=render_quote,
    render_book_delta=render_book_delta,
    render_book_snapshot=render_book_snapshot,
    instruments_path=INSTRUMENTS_PATH,
    render_instruments=render_instruments,
    greeting=STATUS,
)
