"""Coinbase Exchange WebSocket feed (``wss://ws-feed.exchange.coinbase.com``) and the REST ``/products`` listing.

Every frame is one JSON object tagged by ``type``; the exact type picks the handler:

- ``match`` -> :class:`Trade`. Coinbase's ``side`` is the side of the resting (maker) order, so the taker, whose
  side we report, is the opposite: ``side: "sell"`` means a buyer lifted a resting sell order -> ``"buy"``.
  ``trade_id`` counts up by one per product, so a jump is a gap. ``time`` is ISO-8601 UTC with microseconds and
  converts to nanoseconds exactly.
- ``last_match`` replays the product's latest trade once, right after subscribing: it is not a new trade, so it
  gives no event and raises :class:`NotNormalized` (counted, dead-lettered). Its ``trade_id`` is where the next
  ``match`` continues from; a gap detector that wants to check the first live trade (or a reconnect) against it
  reads it from the raw frame (the dead letter keeps it).
- ``ticker`` -> :class:`Quote` from ``best_bid``/``best_bid_size``/``best_ask``/``best_ask_size`` with
  ``seq=sequence``. Tickers recorded before Coinbase added the sizes (2021) carry prices only: they give no
  quote, since a Quote without sizes would have to invent them (a size of 0 would read as an empty level), and
  raise :class:`NotNormalized` (``incomplete``).
- ``snapshot`` -> :class:`BookSnapshot` (the whole book; it carries no time, so ``ts`` is the receipt time) and
  ``l2update`` (``changes``: ``[side, price, size]``, size 0 removes) -> :class:`BookDelta`. ``level2_batch``
  (the unauthenticated channel we subscribe to) sends the same messages as ``level2``. There are no sequence
  numbers and no checksum: a lost update goes unnoticed until the next resubscription.
- ``subscriptions``, ``heartbeat`` and ``status`` are the protocol chatter (``PROTOCOL_CHATTER``) and parse to
  ``[]``; ``error`` raises :class:`ParseError` with Coinbase's message and reason. Any other type (the ``full``
  channel's order messages, ``last_match``, types Coinbase adds) raises :class:`NotNormalized`.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from market_ingestor.errors import NotNormalized, ParseError
from market_ingestor.ingestor.exchanges.base import Channel, ExchangeSpec, ParseContext
from market_ingestor.ingestor.exchanges.wire import (
    DECODE_ERRORS,
    SymbolCache,
    chatter_or_unhandled,
    check_trade,
    decode,
    delimited_name,
    level_ok,
    listed_instrument,
    listed_or,
    quote_ok,
    utc_time_parser,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, Level, MarketEvent, Quote, Side, Trade

EXCHANGE = "coinbase"
WS_URL = "wss://ws-feed.exchange.coinbase.com"
REST_URL = "https://api.exchange.coinbase.com"
INSTRUMENTS_PATH = "/products"

# Our channels -> Coinbase channel names. Plain "level2" needs an authenticated connection; level2_batch does not.
CHANNELS: dict[Channel, str] = {
    Channel.TRADES: "matches",
    Channel.QUOTES: "ticker",
    Channel.BOOK: "level2_batch",
}
# Protocol chatter, parsed to [] without a word: the subscription ack, heartbeats, product/currency status.
PROTOCOL_CHATTER: frozenset[str] = frozenset({"subscriptions", "heartbeat", "status"})
_no_events = chatter_or_unhandled(EXCHANGE, PROTOCOL_CHATTER)

Levels = tuple[Level, ...]
_TAKER: dict[str, Side] = {"buy": "sell", "sell": "buy"}  # maker side -> taker side
_Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


# --- wire formats -------------------------------------------------------------------------------------------


class CoinbaseMatch(msgspec.Struct, frozen=True, tag="match", tag_field="type"):
    """``matches``: one trade; ``side`` is the maker order's side."""

    trade_id: _Id
    side: Literal["buy", "sell"]
    size: Decimal
    price: Decimal
    product_id: str
    time: str

    def events(self, ctx: ParseContext) -> list[MarketEvent]:
        price, size = self.price, self.size
        check_trade("coinbase match", price, size)
        symbol = _symbols.get(ctx.registry, self.product_id)
        return [
            Trade(EXCHANGE, symbol, str(self.trade_id), price, size, _TAKER[self.side], iso_ns(self.time), ctx.recv_ts)
        ]


class CoinbaseTicker(msgspec.Struct, frozen=True, tag="ticker", tag_field="type"):
    """``ticker``: sent on every match (cascades batched), with the best bid/ask after it."""

    product_id: str
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    best_bid_size: Decimal | None = None
    best_ask_size: Decimal | None = None
    sequence: _Id | None = None
    time: str | None = None

    def events(self, ctx: ParseContext) -> list[MarketEvent]:
        bid, ask, bid_size, ask_size = self.best_bid, self.best_ask, self.best_bid_size, self.best_ask_size
        if bid is None or ask is None or bid_size is None or ask_size is None:
            # no sizes (tickers before 2022) or no book: nothing to report without inventing numbers
            raise NotNormalized(EXCHANGE, "ticker", "incomplete", "no quote: best bid/ask or their sizes missing")
        if not quote_ok(bid, bid_size, ask, ask_size):
            raise ParseError(f"coinbase ticker {self.product_id}: prices and sizes must be finite and not negative")
        symbol, recv_ts = _symbols.get(ctx.registry, self.product_id), ctx.recv_ts
        ts = recv_ts if self.time is None else iso_ns(self.time)
        return [Quote(EXCHANGE, symbol, bid, bid_size, ask, ask_size, ts, recv_ts, self.sequence)]


class CoinbaseSnapshot(msgspec.Struct, frozen=True, tag="snapshot", tag_field="type"):
    """``level2``/``level2_batch``: the whole book, sent once on subscription."""

    product_id: str
    bids: Levels
    asks: Levels
    time: str | None = None

    def events(self, ctx: ParseContext) -> list[MarketEvent]:
        for price, size in (*self.bids, *self.asks):
            if not level_ok(price, size):
                raise ParseError(f"coinbase snapshot {self.product_id}: level [{price}, {size}] is not a book level")
        symbol, recv_ts = _symbols.get(ctx.registry, self.product_id), ctx.recv_ts
        ts = recv_ts if self.time is None else iso_ns(self.time)
        return [BookSnapshot(EXCHANGE, symbol, self.bids, self.asks, None, ts, recv_ts)]


class CoinbaseL2Update(msgspec.Struct, frozen=True, tag="l2update", tag_field="type"):
    """``level2``/``level2_batch``: changed levels as ``[side, price, new size]``."""

    product_id: str
    changes: list[tuple[Literal["buy", "sell"], Decimal, Decimal]]
    time: str

    def events(self, ctx: ParseContext) -> list[MarketEvent]:
        bids: list[Level] = []
        asks: list[Level] = []
        for side, price, size in self.changes:
            if not level_ok(price, size):
                raise ParseError(f"coinbase l2update {self.product_id}: level [{price}, {size}] is not a book level")
            (bids if side == "buy" else asks).append((price, size))
        symbol = _symbols.get(ctx.registry, self.product_id)
        return [BookDelta(EXCHANGE, symbol, tuple(bids), tuple(asks), None, None, iso_ns(self.time), ctx.recv_ts)]


class CoinbaseError(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    """A refused request (bad product or channel, malformed JSON): it goes to the dead-letter topic."""

    message: str = ""
    reason: str = ""

    def events(self, ctx: ParseContext) -> list[MarketEvent]:
        raise ParseError(f"coinbase error: {self.message}: {self.reason}")


class _Head(msgspec.Struct, frozen=True):
    type: str | None = None


class _Product(msgspec.Struct, frozen=True):
    id: str
    base_currency: str
    quote_currency: str
    status: str = "online"


_Message = CoinbaseMatch | CoinbaseTicker | CoinbaseSnapshot | CoinbaseL2Update | CoinbaseError
_TAGS = frozenset({"match", "ticker", "snapshot", "l2update", "error"})
_decoder = msgspec.json.Decoder(_Message)
_head_decoder = msgspec.json.Decoder(_Head)
_products_decoder = msgspec.json.Decoder(list[_Product])
_encoder = msgspec.json.Encoder()


# --- time, symbols ------------------------------------------------------------------------------------------

# ``2021-04-17T16:43:37.089723Z`` -> integer nanoseconds since the epoch, exactly (integer arithmetic). The
# fraction may have 0-9 digits; the zone is ``Z``, ``+00:00`` or absent (Coinbase times are UTC).
iso_ns = utc_time_parser(EXCHANGE, zones=("+00:00", ""))

# The registry's symbol when it lists the product; else ``BASE-QUOTE`` -> ``BASEQUOTE``.
_symbols = SymbolCache(listed_or(EXCHANGE, delimited_name(EXCHANGE)))


# --- parse --------------------------------------------------------------------------------------------------


def parse(frame: str | bytes, ctx: ParseContext) -> list[MarketEvent]:
    """msgspec's tagged union picks the message class by the exact ``type``; the class normalizes itself."""
    try:
        message = _decoder.decode(frame)
    except DECODE_ERRORS as exc:
        return _not_normalized(frame, exc)
    return message.events(ctx)


def _not_normalized(frame: str | bytes, exc: Exception) -> list[MarketEvent]:
    """A frame the tagged decoder refused: protocol chatter (``[]``), a type we do not normalize
    (:class:`NotNormalized`) or a malformed one (:class:`ParseError`)."""
    try:
        head = _head_decoder.decode(frame)
    except DECODE_ERRORS:
        raise ParseError(f"coinbase: malformed frame: {exc}") from exc
    if head.type is None:
        raise ParseError("coinbase: a message without 'type'") from exc
    if head.type in _TAGS:
        raise ParseError(f"coinbase {head.type}: {exc}") from exc
    return _no_events(head.type)


# --- subscriptions, instruments -----------------------------------------------------------------------------


def _request(kind: str, natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    if not natives or not channels:
        return []
    names = [CHANNELS[channel] for channel in channels]
    return [_encoder.encode({"type": kind, "product_ids": list(natives), "channels": names}).decode()]


def subscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _request("subscribe", natives, channels)


def unsubscribe(natives: Sequence[str], channels: Sequence[Channel]) -> list[str]:
    return _request("unsubscribe", natives, channels)


def parse_instruments(body: bytes) -> list[Instrument]:
    """``GET /products`` -> every product not ``delisted``. A product whose currency codes are not plain
    letters/digits cannot be named and is left out."""
    products = decode(_products_decoder, body, "coinbase products")
    listed = (
        listed_instrument(EXCHANGE, product.id, product.base_currency, product.quote_currency)
        for product in products
        if product.status != "delisted"
    )
    return [instrument for instrument in listed if instrument is not None]


def native_symbol(symbol: str, registry: InstrumentRegistry) -> str:
    """Coinbase names need the listing: ``BTCUSD`` cannot be split into ``BTC-USD`` without it."""
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
    book_sequence=None,
    book_checksum=None,
    book_resync="resubscribe",
    contiguous_trade_ids=True,
    protocol_chatter=PROTOCOL_CHATTER,
)
