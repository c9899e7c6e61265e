"""What an exchange module declares. Behaviour (connecting, keep-alive, backoff, resubscribing, book resync,
dead-lettering) lives once in the shared connection loop; an exchange is data plus pure functions.

An exchange module defines one :class:`ExchangeSpec` instance named ``SPEC`` and is listed once in
``market_ingestor.ingestor.exchanges.REGISTRY``. Its functions never do I/O and never await:

- ``subscribe`` / ``unsubscribe``: native symbols (and channels) -> the text frames to send;
- ``parse``: one received frame -> normalized events, or :class:`ParseError` naming what is wrong. Protocol
  chatter (subscription acks, pongs, heartbeats, info/status events), and nothing else, parses to an empty list;
  the module lists it in one declared set, ``PROTOCOL_CHATTER`` (also ``ExchangeSpec.protocol_chatter``). A
  well-formed frame that gives no event otherwise (a channel or API version the parser does not read, a frame too
  incomplete for an event) raises :class:`NotNormalized`, a ParseError: it is counted and dead-lettered, so no
  frame is dropped without a word;
- ``parse_instruments``: the REST instrument listing -> :class:`Instrument` list;
- ``parse_book_snapshot`` (REST resync only): the REST depth body -> :class:`BookSnapshot`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, MarketEvent


class Channel(StrEnum):
    TRADES = "trades"
    QUOTES = "quotes"  # best bid/ask
    BOOK = "book"  # L2 snapshot + deltas


ALL_CHANNELS: tuple[Channel, ...] = (Channel.TRADES, Channel.QUOTES, Channel.BOOK)


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What a parser may consult besides the frame: the instrument listing (may be empty: parsers then fall
    back to the exchange's own naming rules) and the receipt time to stamp on events."""

    registry: InstrumentRegistry
    recv_ts: int


ParseFn = Callable[[str | bytes, ParseContext], list[MarketEvent]]
SubscribeFn = Callable[[Sequence[str], Sequence[Channel]], list[str]]
# Does a delta continue the book whose last applied sequence number is ``last_seq``?
SequenceRule = Callable[[int, BookDelta], bool]
# The checksum of a book's top levels as the exchange computes it (bids and asks best first).
ChecksumFn = Callable[[Sequence[tuple[str, str]], Sequence[tuple[str, str]]], int]


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    ws_url: str  # the public endpoint; config may point it at the simulator
    rest_url: str
    subscribe: SubscribeFn
    unsubscribe: SubscribeFn
    parse: ParseFn
    instruments_path: str  # REST path (and query) of the instrument listing, appended to rest_url
    parse_instruments: Callable[[bytes], list[Instrument]]
    # Native name for a normalized symbol when the listing is not at hand (e.g. BTCUSDT -> BTC-USDT needs the
    # listing; Binance's native name *is* the symbol). Raises SymbolError when it cannot know.
    native_symbol: Callable[[str, InstrumentRegistry], str]
    # Book integrity: how deltas chain (None: the exchange sends no sequence numbers) and how the exchange's
    # checksum is computed (None: it sends none). On a gap: "rest" fetches a snapshot, "resubscribe" asks the
    # WebSocket for a fresh one.
    book_sequence: SequenceRule | None = None
    book_checksum: ChecksumFn | None = None
    book_checksum_depth: int = 0  # levels per side the checksum covers
    book_resync: Literal["rest", "resubscribe"] = "resubscribe"
    book_snapshot_path: Callable[[str], str] | None = None  # native symbol -> REST path, for "rest" resync
    parse_book_snapshot: Callable[[bytes, str, int], BookSnapshot] | None = None  # (body, symbol, recv_ts)
    contiguous_trade_ids: bool = False  # trade ids count up by one per symbol: a jump is a gap
    # Client keep-alive: a text frame sent every keepalive_interval_s (None: WebSocket pings suffice).
    keepalive_frame: str | None = None
    keepalive_interval_s: float = 20.0
    max_symbols_per_connection: int = 100
    channels: tuple[Channel, ...] = field(default=ALL_CHANNELS)
    # The names (channels, message types, events, reply ops, in the exchange's terms) of the protocol chatter that
    # parses to [] without a word: the module's PROTOCOL_CHATTER.
    protocol_chatter: frozenset[str] = frozenset()
