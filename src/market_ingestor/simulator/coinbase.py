"""Coinbase Exchange, server side: feed messages, ``subscriptions``/``error`` replies and the ``/products`` listing.

Coinbase sends one ``match`` per trade with the MAKER's side (the opposite of the aggressor), a ``ticker`` with
the best bid/ask and their sizes after each match, a ``snapshot`` of the whole book on ``level2``/``level2_batch``
subscription (no time, no sequence) and ``l2update`` messages with ``[side, price, size]`` changes. Times are
ISO-8601 UTC with microseconds. There is no text keep-alive: WebSocket pings do that job.

The dialect is stateless, so a ``subscriptions`` reply lists the channels of the request it answers (Coinbase
lists all of the connection's subscriptions; after an unsubscribe the reply here is empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator.dialect import (
    ClientRequest,
    SimBook,
    SimBookDelta,
    SimDialect,
    SimInstrument,
    SimQuote,
    SimTrade,
)
from market_ingestor.simulator.render import (
    SECOND_FORMAT,
    SecondTexts,
    TextLevel,
    encode,
    refusal,
    subscription,
    text,
    text_levels,
)

# Coinbase channels -> ours. heartbeat/status/full exist but the simulator does not feed them.
_CHANNELS: dict[str, Channel] = {
    "matches": Channel.TRADES,
    "ticker": Channel.QUOTES,
    "level2": Channel.BOOK,
    "level2_batch": Channel.BOOK,
}
_MAKER_SIDE = {"buy": "sell", "sell": "buy"}  # aggressor side -> the side Coinbase reports on a match


# --- server frames ------------------------------------------------------------------------------------------


class _Match(msgspec.Struct, frozen=True, tag="match", tag_field="type"):
    trade_id: int
    maker_order_id: str
    taker_order_id: str
    side: str
    size: str
    price: str
    product_id: str
    sequence: int
    time: str


class _Ticker(msgspec.Struct, frozen=True, tag="ticker", tag_field="type"):
    sequence: int
    product_id: str
    price: str
    open_24h: str
    volume_24h: str
    low_24h: str
    high_24h: str
    volume_30d: str
    best_bid: str
    best_bid_size: str
    best_ask: str
    best_ask_size: str
    side: str
    time: str
    trade_id: int
    last_size: str


class _Snapshot(msgspec.Struct, frozen=True, tag="snapshot", tag_field="type"):
    product_id: str
    asks: list[TextLevel]
    bids: list[TextLevel]


class _L2Update(msgspec.Struct, frozen=True, tag="l2update", tag_field="type"):
    product_id: str
    changes: list[tuple[str, str, str]]
    time: str


class _SubscribedChannel(msgspec.Struct, frozen=True):
    name: str
    product_ids: list[str]


class _Subscriptions(msgspec.Struct, frozen=True, tag="subscriptions", tag_field="type"):
    channels: list[_SubscribedChannel]


class _Error(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    message: str
    reason: str


# --- client frames ------------------------------------------------------------------------------------------


class _ChannelRequest(msgspec.Struct, frozen=True):
    name: str
    product_ids: list[str] = []


class _Request(msgspec.Struct, frozen=True):
    type: str
    product_ids: list[str] = []
    channels: list[str | _ChannelRequest] = []


_request_decoder = msgspec.json.Decoder(_Request)
_seconds = SecondTexts(lambda second: datetime.fromtimestamp(second, UTC).strftime(SECOND_FORMAT))


def iso_time(ts_ns: int) -> str:
    """Nanoseconds -> Coinbase's ``2021-04-17T16:43:37.089723Z`` (microseconds: Coinbase's precision)."""
    second, micros = divmod(ts_ns // 1_000, 1_000_000)
    return f"{_seconds[second]}.{micros:06d}Z"


def _order_id(trade_id: int, role: int) -> str:
    """A UUID-shaped order id, derived from the trade so rendering stays pure and cheap."""
    digits = f"{role:08x}{trade_id:024x}"[-32:]
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def native(instrument: SimInstrument) -> str:
    return f"{instrument.base}-{instrument.quote}".upper()


def render_trades(native_symbol: str, trades: Sequence[SimTrade]) -> list[str]:
    return [
        encode(
            _Match(
                t.trade_id,
                _order_id(t.trade_id, 1),
                _order_id(t.trade_id, 2),
                _MAKER_SIDE[t.side],
                text(t.qty),
                text(t.price),
                native_symbol,
                t.trade_id,  # Coinbase's sequence is per product and counts all feed messages; trades suffice here
                iso_time(t.ts_ns),
            )
        ).decode()
        for t in trades
    ]


def render_quote(native_symbol: str, quote: SimQuote) -> str:
    bid = text(quote.bid_price)
    ticker = _Ticker(
        quote.seq,
        native_symbol,
        bid,
        bid,
        "0",
        bid,
        bid,
        "0",
        bid,
        text(quote.bid_qty),
        text(quote.ask_price),
        text(quote.ask_qty),
        "sell",
        iso_time(quote.ts_ns),
        quote.seq,
        "0",
    )
    return encode(ticker).decode()


def render_book_snapshot(native_symbol: str, book: SimBook) -> str:
    return encode(_Snapshot(native_symbol, text_levels(book.asks), text_levels(book.bids))).decode()


def render_book_delta(native_symbol: str, delta: SimBookDelta) -> str:
    changes = [("buy", format(p, "f"), format(q, "f")) for p, q in delta.bids]
    changes.extend(("sell", format(p, "f"), format(q, "f")) for p, q in delta.asks)
    return encode(_L2Update(native_symbol, changes, iso_time(delta.ts_ns))).decode()


def render_instruments(instruments: Sequence[SimInstrument]) -> bytes:
    """``GET /products`` with the fields Coinbase lists for each product."""
    products = [
        {
            "id": native(item),
            "base_currency": item.base,
            "quote_currency": item.quote,
            "quote_increment": text(item.tick),
            "base_increment": text(item.lot),
            "display_name": f"{item.base}/{item.quote}",
            "min_market_funds": "1",
            "margin_enabled": False,
            "post_only": False,
            "limit_only": False,
            "cancel_only": False,
            "status": "online",
            "status_message": "",
            "trading_disabled": False,
            "fx_stablecoin": False,
            "max_slippage_percentage": "0.02000000",
            "auction_mode": False,
            "high_bid_limit_percentage": "",
        }
        for item in instruments
    ]
    return encode(products)


# --- client requests ----------------------------------------------------------------------------------------


def _error(message: str, reason: str) -> ClientRequest:
    return refusal(encode(_Error(message, reason)).decode())


def parse_client_frame(frame: str) -> ClientRequest:
    try:
        request = _request_decoder.decode(frame)
    except msgspec.ValidationError as exc:
        return _error("Failed to subscribe", str(exc))
    except msgspec.DecodeError:
        return _error("Malformed JSON", "The request is not a JSON object")
    if request.type not in ("subscribe", "unsubscribe"):
        return _error("Failed to subscribe", f"Type {request.type!r} is not a valid message type")
    wanted: list[tuple[str, list[str]]] = []
    for item in request.channels:
        name, products = (item, request.product_ids) if isinstance(item, str) else (item.name, item.product_ids)
        if name not in _CHANNELS:
            return _error("Failed to subscribe", f"{name} is not a valid channel")
        wanted.append((name, products or request.product_ids))
    if not wanted or not any(products for _, products in wanted):
        return _error("Failed to subscribe", "No channels or product ids provided")
    subscriptions = tuple((_CHANNELS[name], product) for name, products in wanted for product in products)
    subscribe = request.type == "subscribe"
    listed = [_SubscribedChannel(name, products) for name, products in wanted] if subscribe else []
    return subscription(subscribe, subscriptions, (encode(_Subscriptions(listed)).decode(),))


DIALECT = SimDialect(
    name="coinbase",
    ws_path="/",
    native=native,
    parse_client_frame=parse_client_frame,
    render_trades=render_trades,
    render_quote=render_quote,
    render_book_delta=render_book_delta,
    render_book_snapshot=render_book_snapshot,
    instruments_path="/products",
    render_instruments=render_instruments,
)
