"""Kraken spot: WebSocket v2 live (``wss://ws.kraken.com/v2``), v1 frames for recorded sessions, ``AssetPairs``.

``parse`` reads both protocol versions: v1 data frames are JSON arrays, v2 frames are objects dispatched on
``channel`` (data) or ``method`` (replies); v1 event objects (``{"event": ...}``) are read too.

v2 (live):

- ``trade`` -> :class:`Trade`; ``side`` is the taker's side, ``trade_id`` counts up by one per pair.
- ``ticker`` (subscribed with ``event_trigger: "bbo"``) -> :class:`Quote`. Its ``timestamp`` is used when
  present; older ticker messages carry none and get the receipt time.
- ``book`` ``snapshot``/``update`` -> :class:`BookSnapshot`/:class:`BookDelta` with Kraken's ``checksum``; no
  sequence numbers, so integrity rests on the checksum and a resync is a fresh subscription.
- protocol chatter (``PROTOCOL_CHATTER``: the ``heartbeat`` and ``status`` channels, successful replies to
  ``subscribe``/``unsubscribe`` and ``pong``) -> ``[]``; a reply with ``success: false`` raises
  :class:`ParseError` carrying Kraken's error text; other channels (``ohlc``, ``instrument``, ...) and replies to
  other methods raise :class:`NotNormalized` (counted and dead-lettered).

Prices and quantities are JSON numbers in v2 and strings in v1; both decode straight into ``Decimal`` from
their text (msgspec never goes through float), so ``0.10000000`` keeps its digits. Timestamps: v2 RFC 3339
(``2023-09-25T09:04:31.742648Z``) and v1 ``"seconds.micro"`` strings are converted to integer nanoseconds
from their digits.

v1 (recordings):

- ``[channelID, [[price, volume, time, side, orderType, misc], ...], "trade", pair]``: ``side`` ``b``/``s`` is
  the taker's side. v1 trades carry no id: the id is made from the trade's time string and its index in the
  frame, ``"1700000000.000123-0"``, the same on every replay of the frame (not an integer: the connector's
  trade-id gap check skips it).
- ``[channelID, {"as": [...], "bs": [...]}, "book-N", pair]`` is a snapshot (no checksum);
  ``[channelID, {"a": [...]}, {"b": [...], "c": "crc"}, "book-N", pair]`` an update of one or two dicts with
  the checksum in the last. Levels are ``[price, volume, time]`` (``, "r"`` for a republish, applied like any
  update). A book event's ``ts`` is the latest level time in the frame.
- ``[channelID, {"a": [price, wholeLotVolume, lotVolume], "b": [...], "c": ..., ...}, "ticker", pair]`` ->
  :class:`Quote` from the best ask ``a`` and bid ``b``, sized by the lot volume (the whole-lot volume is the
  same size rounded down to whole lots); v1 tickers carry no time, so ``ts`` is the receipt time.
- ``[channelID, [bid, ask, time, bidVolume, askVolume], "spread", pair]`` -> :class:`Quote` at ``time``. A spread
  without the volumes (as Kraken sent them before adding the volumes) cannot make a complete quote: it raises
  :class:`NotNormalized` (``incomplete``).
- events (``{"event": ...}``): ``heartbeat``, ``systemStatus``, ``subscriptionStatus`` and ``pong`` are protocol
  chatter -> ``[]``; ``error`` (or ``status: error``) raises :class:`ParseError`; other channels (``ohlc-N``)
  and events raise :class:`NotNormalized`.

Checksum (both versions): CRC32 of the top 10 asks (lowest first) then the top 10 bids (highest first), each
level as price then quantity with the decimal point removed and leading zeros stripped, from the numbers'
text as Kraken sent it (v2 sends them at full precision, trailing zeros included). Kraken's guide also says a
book must be truncated to the subscribed depth after each update (levels leaving the window get no delete);
:class:`BookSync` keeps every level, so a deep subscription (``BOOK_DEPTH``) keeps stale levels far from the
top 10, and a mismatch that still happens triggers a resubscribe.

Native names are v2's (``BTC/USD``, ``DOGE/USD``): ``AssetPairs`` gives v1 ``wsname`` values (``XBT/USD``,
``XDG/USD``, which v2 refuses), folded to v2 names through the normalized asset codes. The v1 spelling still
normalizes (``XBT/USD`` -> ``BTCUSD``) because the registry falls back to splitting a delimited name.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Literal

import msgspec

from market_ingestor.errors import NotNormalized, ParseError, SymbolError
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext
from market_ingestor.ingestor.exchanges.wire import (
    DECODE_ERRORS,
    SymbolCache,
    ascii_digits,
    chatter_or_unhandled,
    check_trade,
    decode,
    delimited_name,
    level_ok,
    levels_ok,
    listed_or,
    quote_ok,
    utc_time_parser,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry, split_delimited
from market_ingestor.model import BookDelta, BookSnapshot, Level, MarketEvent, Quote, Side, Trade

EXCHANGE = "kraken"
WS_URL = "wss://ws.kraken.com/v2"
REST_URL = "https://api.kraken.com"
INSTRUMENTS_PATH = "/0/public/AssetPairs"
BOOK_DEPTH = 100  # levels per side subscribed (10, 25, 100, 500 or 1000)
CHECKSUM_DEPTH = 10
PING_FRAME = '{"method":"ping"}'

# Our channels -> Kraken v2 channel names, and the extra subscribe parameters each one takes.
CHANNELS: dict[Channel, str] = {Channel.TRADES: "trade", Channel.QUOTES: "ticker", Channel.BOOK: "book"}
# Trades: no snapshot of the last 50 trades on (re)subscribing, they were published already.
_SUBSCRIBE_PARAMS: dict[Channel, dict[str, Any]] = {
    Channel.TRADES: {"snapshot": False},
    Channel.QUOTES: {"event_trigger": "bbo"},
    Channel.BOOK: {"depth": BOOK_DEPTH},
}
_UNSUBSCRIBE_PARAMS: dict[Channel, dict[str, Any]] = {Channel.BOOK: {"depth": BOOK_DEPTH}}

# Protocol chatter, parsed to [] without a word: v2 channels heartbeat and status, v2 replies to these methods, and
# v1 events.
PROTOCOL_CHATTER: frozenset[str] = frozenset(
    {"heartbeat", "status", "subscribe", "unsubscribe", "pong", "systemStatus", "subscriptionStatus"}
)
_no_events = chatter_or_unhandled(EXCHANGE, PROTOCOL_CHATTER)

Levels = tuple[Level, ...]
_SIDES: dict[str, Side] = {"b": "buy", "s": "sell"}


# --- v2 wire formats ----------------------------------------------------------------------------------------


class KrakenTrade(msgspec.Struct, frozen=True):
    symbol: str
    side: Side  # the taker's side
    price: Decimal
    qty: Decimal
    trade_id: int
    timestamp: str
    ord_type: str = ""

    def to_trade(self, symbol: str, recv_ts: int) -> Trade:
        check_trade("kraken trade", self.price, self.qty)
        return Trade(
            EXCHANGE, symbol, str(self.trade_id), self.price, self.qty, self.side, rfc3339_ns(self.timestamp), recv_ts
        )


class KrakenTicker(msgspec.Struct, frozen=True):
    symbol: str
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal
    timestamp: str | None = None

    def to_quote(self, symbol: str, recv_ts: int) -> Quote:
        if not quote_ok(self.bid, self.bid_qty, self.ask, self.ask_qty):
            raise ParseError("kraken ticker: prices and sizes must be finite and not negative")
        ts = recv_ts if self.timestamp is None else rfc3339_ns(self.timestamp)
        return Quote(EXCHANGE, symbol, self.bid, self.bid_qty, self.ask, self.ask_qty, ts, recv_ts)


class KrakenLevel(msgspec.Struct, frozen=True):
    price: Decimal
    qty: Decimal


class KrakenBook(msgspec.Struct, frozen=True):
    symbol: str
    bids: list[KrakenLevel] = []
    asks: list[KrakenLevel] = []
    checksum: int | None = None
    timestamp: str | None = None

    def to_event(self, snapshot: bool, symbol: str, recv_ts: int) -> BookSnapshot | BookDelta:
        bids = _v2_levels(self.bids)
        asks = _v2_levels(self.asks)
        ts = recv_ts if self.timestamp is None else rfc3339_ns(self.timestamp)
        if snapshot:
            return BookSnapshot(EXCHANGE, symbol, bids, asks, None, ts, recv_ts, self.checksum)
        return BookDelta(EXCHANGE, symbol, bids, asks, None, None, ts, recv_ts, None, self.checksum)


class _TradeMessage(msgspec.Struct, frozen=True, tag="trade", tag_field="channel"):
    type: str
    data: list[KrakenTrade]


class _TickerMessage(msgspec.Struct, frozen=True, tag="ticker", tag_field="channel"):
    type: str
    data: list[KrakenTicker]


class _BookMessage(msgspec.Struct, frozen=True, tag="book", tag_field="channel"):
    type: Literal["snapshot", "update"]
    data: list[KrakenBook]


_V2Message = _TradeMessage | _TickerMessage | _BookMessage


class _Reply(msgspec.Struct, frozen=True):
    """Anything else that is an object: a v2 reply (``method``), another v2 channel, or a v1 event."""

    channel: str | None = None
    method: str | None = None
    success: bool | None = None
    error: str | None = None
    event: str | None = None
    status: str | None = None
    errorMessage: str | None = None


# --- v1 wire formats ----------------------------------------------------------------------------------------


class KrakenV1Trade(msgspec.Struct, frozen=True, array_like=True):
    price: Decimal
    volume: Decimal
    time: str
    side: Literal["b", "s"]
    order_type: str = ""
    misc: str = ""


class KrakenV1Level(msgspec.Struct, frozen=True, array_like=True):
    price: Decimal
    volume: Decimal
    time: str
    flag: str = ""  # "r": a republished level


class KrakenV1Best(msgspec.Struct, frozen=True, array_like=True):
    """A v1 ticker's best ask ``a`` or bid ``b``: ``[price, wholeLotVolume, lotVolume]``."""

    price: Decimal
    whole_lot_volume: int | str  # the lot volume in whole lots: not used
    lot_volume: Decimal


class KrakenV1Ticker(msgspec.Struct, frozen=True):
    """A v1 ticker's object; the 24 h statistics (``c``, ``v``, ``p``, ``t``, ``l``, ``h``, ``o``) are not read."""

    a: KrakenV1Best
    b: KrakenV1Best

    def to_quote(self, symbol: str, recv_ts: int) -> Quote:
        ask, bid = self.a, self.b
        if not quote_ok(bid.price, bid.lot_volume, ask.price, ask.lot_volume):
            raise ParseError("kraken v1 ticker: prices and volumes must be finite and not negative")
        return Quote(EXCHANGE, symbol, bid.price, bid.lot_volume, ask.price, ask.lot_volume, recv_ts, recv_ts)


class KrakenV1Spread(msgspec.Struct, frozen=True, array_like=True):
    """v1 ``spread``: ``[bid, ask, time, bidVolume, askVolume]`` (the volumes are missing in old sessions)."""

    bid: Decimal
    ask: Decimal
    time: str
    bid_volume: Decimal | None = None
    ask_volume: Decimal | None = None

    def to_quote(self, symbol: str, recv_ts: int) -> Quote:
        if self.bid_volume is None or self.ask_volume is None:
            raise NotNormalized(EXCHANGE, "spread", "incomplete", "no quote: the spread carries no volumes")
        if not quote_ok(self.bid, self.bid_volume, self.ask, self.ask_volume):
            raise ParseError("kraken v1 spread: prices and volumes must be finite and not negative")
        ts = epoch_text_ns(self.time)
        return Quote(EXCHANGE, symbol, self.bid, self.bid_volume, self.ask, self.ask_volume, ts, recv_ts)


class _V1BookPart(msgspec.Struct, frozen=True):
    snapshot_asks: list[KrakenV1Level] | None = msgspec.field(default=None, name="as")
    snapshot_bids: list[KrakenV1Level] | None = msgspec.field(default=None, name="bs")
    a: list[KrakenV1Level] | None = None
    b: list[KrakenV1Level] | None = None
    c: str | None = None


# --- REST ---------------------------------------------------------------------------------------------------


class _AssetPair(msgspec.Struct, frozen=True):
    wsname: str | None = None  # dark-pool pairs (".d") have none: not on the WebSocket


class _AssetPairs(msgspec.Struct, frozen=True):
    error: list[str] = []
    result: dict[str, _AssetPair] = {}


_v2_decoder = msgspec.json.Decoder(_V2Message)
_other_decoder = msgspec.json.Decoder(list[msgspec.Raw] | _Reply)
_str_decoder = msgspec.json.Decoder(str)
_v1_trades_decoder = msgspec.json.Decoder(list[KrakenV1Trade])
_v1_book_decoder = msgspec.json.Decoder(_V1BookPart)
_v1_ticker_decoder = msgspec.json.Decoder(KrakenV1Ticker)
_v1_spread_decoder = msgspec.json.Decoder(KrakenV1Spread)
_asset_pairs_decoder = msgspec.json.Decoder(_AssetPairs)
_encoder = msgspec.json.Encoder()


# --- checks, times, symbols ---------------------------------------------------------------------------------


def _v2_levels(levels: list[KrakenLevel]) -> Levels:
    out = tuple([(level.price, level.qty) for level in levels])
    if not levels_ok(out):
        raise ParseError("kraken book: a level has a non-positive price or a negative/non-finite quantity")
    return out


# ``2023-09-25T09:04:31.742648Z`` -> integer nanoseconds since the epoch (UTC, 0-9 fraction digits, zone ``Z``).
rfc3339_ns = utc_time_parser(EXCHANGE, leap_second=True)


def epoch_text_ns(text: str) -> int:
    """v1 ``"1618678142.557535"`` (seconds, optional fraction) -> integer nanoseconds, from the digits."""
    whole, dot, fraction = text.partition(".")
    if not (ascii_digits(whole) and len(whole) <= 12) or (dot and not (ascii_digits(fraction) and len(fraction) <= 9)):
        raise ParseError(f"kraken: not a seconds timestamp: {text!r}")
    ns = int(whole) * 1_000_000_000
    return ns + int(fraction) * 10 ** (9 - len(fraction)) if fraction else ns


# Kraken's names carry their delimiter, so a name missing from the listing is split: XBT/USD -> BTCUSD.
_symbols = SymbolCache(listed_or(EXCHANGE, delimited_name(EXCHANGE)))


# --- checksum -----------------------------------------------------------------------------------------------


def _checksum_text(value: str) -> str:
    return value.replace(".", "").lstrip("0")


def book_checksum(bids: Sequence[tuple[str, str]], asks: Sequence[tuple[str, str]]) -> int:
    """Kraken's CRC32 of the top 10 asks then the top 10 bids (both best first), as an unsigned integer."""
    text = "".join(
        [_checksum_text(price) + _checksum_text(qty) for price, qty in asks[:CHECKSUM_DEPTH]]
        + [_checksum_text(price) + _checksum_text(qty) for price, qty in bids[:CHECKSUM_DEPTH]]
    )
    return zlib.crc32(text.encode())


# --- parse: v2 ----------------------------------------------------------------------------------------------


def _on_trades(message: _TradeMessage, ctx: ParseContext) -> list[MarketEvent]:
    registry, recv_ts = ctx.registry, ctx.recv_ts
    return [trade.to_trade(_symbols.get(registry, trade.symbol), recv_ts) for trade in message.data]


def _on_ticker(message: _TickerMessage, ctx: ParseContext) -> list[MarketEvent]:
    return [ticker.to_quote(_symbols.get(ctx.registry, ticker.symbol), ctx.recv_ts) for ticker in message.data]


def _on_book(message: _BookMessage, ctx: ParseContext) -> list[MarketEvent]:
    snapshot = message.type == "snapshot"
    return [book.to_event(snapshot, _symbols.get(ctx.registry, book.symbol), ctx.recv_ts) for book in message.data]


_V2_HANDLERS: dict[type, Callable[[Any, ParseContext], list[MarketEvent]]] = {
    _TradeMessage: _on_trades,
    _TickerMessage: _on_ticker,
    _BookMessage: _on_book,
}
_V2_DATA_CHANNELS = frozenset(CHANNELS.values())


# --- parse: v1 ----------------------------------------------------------------------------------------------


def _on_v1_trades(parts: list[msgspec.Raw], pair: str, ctx: ParseContext) -> list[MarketEvent]:
    if len(parts) != 4:
        raise ParseError(f"kraken v1 trade frame has {len(parts)} elements, expected 4")
    symbol = _symbols.get(ctx.registry, pair)
    events: list[MarketEvent] = []
    for index, trade in enumerate(_v1_trades_decoder.decode(parts[1])):
        check_trade("kraken trade", trade.price, trade.volume)
        trade_id = f"{trade.time}-{index}"
        ts = epoch_text_ns(trade.time)
        events.append(Trade(EXCHANGE, symbol, trade_id, trade.price, trade.volume, _SIDES[trade.side], ts, ctx.recv_ts))
    return events


def _v1_levels(levels: list[KrakenV1Level] | None, times: list[int]) -> Levels:
    if not levels:
        return ()
    out = []
    for level in levels:
        if not level_ok(level.price, level.volume):
            raise ParseError("kraken v1 book: a level has a non-positive price or a negative/non-finite volume")
        times.append(epoch_text_ns(level.time))
        out.append((level.price, level.volume))
    return tuple(out)


def _on_v1_book(parts: list[msgspec.Raw], pair: str, ctx: ParseContext) -> list[MarketEvent]:
    if len(parts) not in (4, 5):
        raise ParseError(f"kraken v1 book frame has {len(parts)} elements, expected 4 or 5")
    symbol = _symbols.get(ctx.registry, pair)
    books = [_v1_book_decoder.decode(raw) for raw in parts[1:-2]]
    times: list[int] = []
    if any(book.snapshot_asks is not None or book.snapshot_bids is not None for book in books):
        if len(books) != 1:
            raise ParseError("kraken v1 book snapshot must be one {as, bs} object")
        book = books[0]
        asks, bids = _v1_levels(book.snapshot_asks, times), _v1_levels(book.snapshot_bids, times)
        ts = max(times, default=ctx.recv_ts)
        return [BookSnapshot(EXCHANGE, symbol, bids, asks, None, ts, ctx.recv_ts)]
    asks = tuple(level for book in books for level in _v1_levels(book.a, times))
    bids = tuple(level for book in books for level in _v1_levels(book.b, times))
    checksum_text = books[-1].c
    if checksum_text is None or not (ascii_digits(checksum_text) and len(checksum_text) <= 10):
        raise ParseError(f"kraken v1 book update: checksum 'c' missing or not a number: {checksum_text!r}")
    ts = max(times, default=ctx.recv_ts)
    return [BookDelta(EXCHANGE, symbol, bids, asks, None, None, ts, ctx.recv_ts, None, int(checksum_text))]


def _on_v1_ticker(parts: list[msgspec.Raw], pair: str, ctx: ParseContext) -> list[MarketEvent]:
    if len(parts) != 4:
        raise ParseError(f"kraken v1 ticker frame has {len(parts)} elements, expected 4")
    return [_v1_ticker_decoder.decode(parts[1]).to_quote(_symbols.get(ctx.registry, pair), ctx.recv_ts)]


def _on_v1_spread(parts: list[msgspec.Raw], pair: str, ctx: ParseContext) -> list[MarketEvent]:
    if len(parts) != 4:
        raise ParseError(f"kraken v1 spread frame has {len(parts)} elements, expected 4")
    return [_v1_spread_decoder.decode(parts[1]).to_quote(_symbols.get(ctx.registry, pair), ctx.recv_ts)]


_V1_HANDLERS: dict[str, Callable[[list[msgspec.Raw], str, ParseContext], list[MarketEvent]]] = {
    "trade": _on_v1_trades,
    "ticker": _on_v1_ticker,
    "spread": _on_v1_spread,
    **{f"book-{depth}": _on_v1_book for depth in (10, 25, 100, 500, 1000)},
}


def _on_v1(parts: list[msgspec.Raw], ctx: ParseContext) -> list[MarketEvent]:
    if len(parts) < 4:
        raise ParseError(f"kraken v1 frame has {len(parts)} elements, expected at least 4")
    channel_name, pair = _str_decoder.decode(parts[-2]), _str_decoder.decode(parts[-1])
    handler = _V1_HANDLERS.get(channel_name)
    if handler is None:
        return _no_events(channel_name)  # ohlc-N and other channels: NotNormalized
    return handler(parts, pair, ctx)


# --- parse: replies and events ------------------------------------------------------------------------------


def _on_reply(reply: _Reply) -> list[MarketEvent]:
    if reply.channel is not None:
        return _no_events(reply.channel)  # heartbeat, status; NotNormalized for ohlc, instrument, ...
    if reply.success is False:
        raise ParseError(f"kraken rejected {reply.method or 'a request'}: {reply.error or 'no reason given'}")
    if reply.method is not None:
        return _no_events(reply.method)  # subscribe/unsubscribe acks, pong
    if reply.event is not None:
        if reply.event == "error" or reply.status == "error":
            raise ParseError(f"kraken {reply.event} error: {reply.errorMessage or 'no reason given'}")
        return _no_events(reply.event)  # v1 heartbeat, systemStatus, subscriptionStatus, pong
    raise ParseError("kraken: an object with neither 'channel', 'method' nor 'event'")


def parse(frame: str | bytes, ctx: ParseContext) -> list[MarketEvent]:
    try:
        if frame[:1] not in ("[", b"["):
            try:
                message = _v2_decoder.decode(frame)
            except msgspec.ValidationError as exc:
                return _parse_other(frame, ctx, exc)
            return _V2_HANDLERS[type(message)](message, ctx)
        return _parse_other(frame, ctx, None)
    except DECODE_ERRORS as exc:
        raise ParseError(f"kraken: malformed frame: {exc}") from exc


def _parse_other(frame: str | bytes, ctx: ParseContext, v2_error: msgspec.ValidationError | None) -> list[MarketEvent]:
    decoded = _other_decoder.decode(frame)
    if isinstance(decoded, list):
        return _on_v1(decoded, ctx)
    if v2_error is not None and decoded.channel in _V2_DATA_CHANNELS:
        raise ParseError(f"kraken {decoded.channel} frame: {v2_error}") from v2_error
    return _on_reply(decoded)


# --- subscriptions, instruments -----------------------------------------------------------------------------


def _requests(method: str, natives: Sequence[str], channels: Sequence[Channel], extra: dict[Channel, Any]) -> list[str]:
    if not natives:
        return []
    return [
        _encoder.encode(
            {
                "method": method,
                "params": {"channel": CHANNELS[channel], "symbol": list(natives), **extra.get(channel, {})},
            }
        ).decode()
        for channel in channels
    ]


def subscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("subscribe", natives, channels, _SUBSCRIBE_PARAMS)


def unsubscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _requests("unsubscribe", natives, channels, _UNSUBSCRIBE_PARAMS)


def parse_instruments(body: bytes) -> list[Instrument]:
    """``GET /0/public/AssetPairs`` -> one instrument per pair on the WebSocket, named the v2 way (``BTC/USD``).

    Pairs without a ``wsname`` (dark pools, ``XXBTZUSD.d``) and pairs whose asset codes the pipeline cannot
    name (``ETH2.S/ETH``) are left out."""
    listing = decode(_asset_pairs_decoder, body, "kraken AssetPairs")
    if listing.error:
        raise ParseError(f"kraken AssetPairs error: {'; '.join(listing.error)}")
    instruments = []
    for pair in listing.result.values():
        if pair.wsname is None:
            continue
        try:
            base, quote = split_delimited(pair.wsname)
        except SymbolError:
            continue
        instruments.append(Instrument(EXCHANGE, f"{base}/{quote}", base, quote))
    return instruments


def native_symbol(symbol: str, registry: InstrumentRegistry) -> str:
    """The v2 name of a normalized symbol: from the listing, or from a delimited form (``BTC-USD``)."""
    try:
        return registry.by_symbol(EXCHANGE, symbol).native
    except SymbolError:
        try:
            base, quote = split_delimited(symbol)
        except SymbolError:
            raise SymbolError(f"unknown symbol {symbol!r} on kraken: not in its AssetPairs listing") from None
        return f"{base}/{quote}"


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
    book_checksum=book_checksum,
    book_checksum_depth=CHECKSUM_DEPTH,
    book_resync="resubscribe",
    contiguous_trade_ids=True,
    keepalive_frame=PING_FRAME,
    protocol_chatter=PROTOCOL_CHATTER,
)
