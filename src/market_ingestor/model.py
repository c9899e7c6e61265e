"""The normalized event model shared by every layer: ingest, bus, streams, sinks, push.

Prices and quantities are ``Decimal`` from the wire to the database; on every wire (Kafka, NATS, WebSocket,
JSON lines) they travel as JSON strings, exactly as the exchange sent them, in plain digits (``"0.00000000"``,
never ``"0E-8"``: :mod:`market_ingestor.jsontext`), so a consumer in any language can read them without float
rounding. Timestamps are integers in nanoseconds since the Unix epoch (UTC).

Every event is a frozen msgspec Struct tagged with a ``type`` field, so a mixed stream (``parse`` output, the
dead-letter topic) decodes into the right class. The topic schemas are documented in ``docs/topics.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Literal, TypeVar

import msgspec

from market_ingestor.jsontext import JsonEncoder

Side = Literal["buy", "sell"]
# One price level of an L2 book: (price, quantity). A quantity of 0 in a delta removes the level.
Level = tuple[Decimal, Decimal]


class Trade(msgspec.Struct, frozen=True, tag="trade", tag_field="type"):
    exchange: str
    symbol: str
    trade_id: str
    price: Decimal
    qty: Decimal
    side: Side  # the aggressor (taker) side
    ts: int  # exchange time, ns
    recv_ts: int  # local receipt time, ns


class Quote(msgspec.Struct, frozen=True, tag="quote", tag_field="type"):
    """Best bid and ask (L1) with their sizes."""

    exchange: str
    symbol: str
    bid_price: Decimal
    bid_qty: Decimal
    ask_price: Decimal
    ask_qty: Decimal
    ts: int
    recv_ts: int
    seq: int | None = None  # the exchange's update id, where it sends one


class BookSnapshot(msgspec.Struct, frozen=True, tag="book_snapshot", tag_field="type"):
    """A full L2 book; ``seq`` is the exchange's sequence number the deltas that follow continue from."""

    exchange: str
    symbol: str
    bids: tuple[Level, ...]  # best (highest) first
    asks: tuple[Level, ...]  # best (lowest) first
    seq: int | None
    ts: int
    recv_ts: int
    checksum: int | None = None  # the exchange's checksum of the resulting book, where it sends one


class BookDelta(msgspec.Struct, frozen=True, tag="book_delta", tag_field="type"):
    """Changed L2 levels. ``first_seq``..``last_seq`` is the range of exchange update ids it covers and
    ``prev_seq`` the id it follows, where the exchange states one (OKX ``prevSeqId``)."""

    exchange: str
    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    first_seq: int | None
    last_seq: int | None
    ts: int
    recv_ts: int
    prev_seq: int | None = None
    checksum: int | None = None  # the exchange's checksum of the book after this delta, where it sends one


# The price and volume fields of a kline, in this order: ``Kline``, the aggregation's running state
# (``streams/klines.py``, ``_Agg``) and the indicators' ``Bar`` (``indicators/series.py``) declare them so,
# and code that walks them uses this tuple (``tests/test_model.py`` checks the three declarations against it).
OHLCV_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume")


class Kline(msgspec.Struct, frozen=True, tag="kline", tag_field="type"):
    """An OHLCV candle with the same meaning as an exchange's own klines.

    ``open_time`` is inclusive and ``close_time`` is the last nanosecond of the window (exchange style:
    open_time + interval - 1). ``revision`` grows when a late trade corrects an already emitted closed kline;
    consumers upsert by (exchange, symbol, interval, open_time) keeping the highest revision.
    """

    exchange: str
    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trade_count: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal
    first_trade_id: str | None
    last_trade_id: str | None
    vwap: Decimal
    closed: bool
    revision: int = 0


class IndicatorValue(msgspec.Struct, frozen=True, tag="indicator", tag_field="type"):
    """One indicator's value(s) for a closed kline; multi-output indicators (MACD, Bollinger) fill several
    named values, e.g. ``{"macd": ..., "signal": ..., "hist": ...}``."""

    exchange: str
    symbol: str
    interval: str
    name: str  # e.g. "rsi_14", "macd_12_26_9"
    open_time: int
    values: dict[str, Decimal]
    revision: int = 0


class DeadLetter(msgspec.Struct, frozen=True, tag="deadletter", tag_field="type"):
    """Input that could not be normalized, kept with the reason so nothing is silently lost."""

    exchange: str
    raw: str
    reason: str
    recv_ts: int


class ControlCommand(msgspec.Struct, frozen=True, tag="control", tag_field="type"):
    """A runtime change to what the ingestors subscribe to, carried on the compacted control topic.

    The latest command per (target, exchange, symbol) is the state: compaction keeps exactly that.
    """

    action: Literal["add", "remove"]
    target: Literal["exchange", "symbol"]
    exchange: str
    symbol: str | None = None
    ts: int = 0


ConnectorState = Literal["starting", "idle", "connected", "degraded", "disconnected", "stopped"]


class ConnectorStatus(msgspec.Struct, frozen=True, tag="status", tag_field="type"):
    """How one ingest instance's connector to one exchange is doing, published every few seconds on the
    compacted status topic (the control panel reads the latest per key)."""

    instance: str  # the ingest process (host name, or ``ingest.instance``)
    exchange: str
    state: ConnectorState
    connections: int  # WebSocket connections of the connector
    connected: int  # of which open now
    reconnects: int  # since the connector started
    last_message_age_ms: int | None  # since the last frame on any of its connections; None before the first
    frames: int  # received since the process started
    events: int  # normalized events produced since the process started
    symbols: list[str]  # subscribed now (a refused symbol is not among them)
    ts: int  # when this was measured, ns


MarketEvent = Trade | Quote | BookSnapshot | BookDelta | Kline | IndicatorValue
AnyEvent = MarketEvent | DeadLetter | ControlCommand | ConnectorStatus


# Encoders/decoders are built once: msgspec's speed comes from reusing them.
_encoder = JsonEncoder()
_any_decoder = msgspec.json.Decoder(AnyEvent)

# One JSON object, Decimals in the exchange's plain digits ("0.00000000", never "0E-8"): ``jsontext``. The bound
# method itself, not a function calling it: this runs for every event published.
encode: Callable[[AnyEvent], bytes] = _encoder.encode


def decode(data: bytes | str) -> AnyEvent:
    """Decode any tagged event; raises ``msgspec.ValidationError``/``DecodeError`` naming the bad field."""
    return _any_decoder.decode(data)


T = TypeVar("T")


def decoder_for(cls: type[T]) -> msgspec.json.Decoder[T]:
    """A fast decoder for one event type, for consumers that read a single topic."""
    return msgspec.json.Decoder(cls)
