"""What the simulator needs from each exchange: how its frames look from the server side.

The simulator's market (random walk, books, sequence numbers, faults) is exchange-neutral and produces the
``Sim*`` values below; a dialect renders them in one exchange's real wire format and reads that exchange's
client requests. Dialect functions are pure: text in, text out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from market_ingestor.ingestor.exchanges.base import Channel

Levels = tuple[tuple[Decimal, Decimal], ...]  # (price, qty), best first


@dataclass(frozen=True, slots=True)
class SimInstrument:
    base: str  # normalized asset codes, e.g. BTC, USDT
    quote: str
    tick: Decimal  # price increment
    lot: Decimal  # quantity increment


@dataclass(frozen=True, slots=True)
class SimTrade:
    trade_id: int  # counts up by one per symbol (unless a gap fault skips some)
    price: Decimal
    qty: Decimal
    side: Literal["buy", "sell"]  # aggressor side
    ts_ns: int


@dataclass(frozen=True, slots=True)
class SimQuote:
    bid_price: Decimal
    bid_qty: Decimal
    ask_price: Decimal
    ask_qty: Decimal
    seq: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class SimBook:
    bids: Levels  # the whole simulated book, best first
    asks: Levels
    seq: int  # sequence number of the last update included
    ts_ns: int


@dataclass(frozen=True, slots=True)
class SimBookDelta:
    bids: Levels  # changed levels; qty 0 removes the level
    asks: Levels
    first_seq: int  # first update id this delta covers
    last_seq: int  # last update id it covers (the book's seq afterwards)
    prev_seq: int  # the book's seq before it (== first_seq - 1 unless a gap fault was injected)
    ts_ns: int
    book: SimBook  # the book after applying it (for exchanges that send a checksum)


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client frame as the exchange understands it."""

    action: Literal["subscribe", "unsubscribe", "ping", "ignore", "invalid"]
    subscriptions: tuple[tuple[Channel, str], ...] = ()  # (channel, native symbol)
    replies: tuple[str, ...] = ()  # frames the exchange answers with (acks, pongs, errors)


@dataclass(frozen=True, slots=True)
class SimDialect:
    name: str
    ws_path: str  # the exchange's WebSocket path, served by the simulator under /{name}{ws_path}
    native: Callable[[SimInstrument], str]  # the exchange's name for an instrument
    parse_client_frame: Callable[[str], ClientRequest]
    render_trades: Callable[[str, Sequence[SimTrade]], list[str]]  # native symbol, trades -> frames
    render_quote: Callable[[str, SimQuote], str]
    render_book_delta: Callable[[str, SimBookDelta], str]
    # A WebSocket snapshot sent on book subscription; None where snapshots come only from REST (Binance).
    render_book_snapshot: Callable[[str, SimBook], str] | None
    instruments_path: str  # REST path of the listing (the part before any '?')
    render_instruments: Callable[[Sequence[SimInstrument]], bytes]
    # REST depth snapshot: path (before '?'), and the body for a native symbol; None where unused.
    rest_book_path: str | None = None
    render_rest_book: Callable[[str, SimBook], bytes] | None = None
    # Which query parameter of the REST depth request names the symbol.
    rest_book_symbol_param: str = "symbol"
    # Subscriptions carried in the connect URL's query (Binance ``/stream?streams=a@trade/b@depth``).
    subscriptions_from_query: Callable[[dict[str, str]], tuple[tuple[Channel, str], ...]] | None = None
    # Text frame the exchange sends right after the connection opens (e.g. a welcome/status), if any.
    greeting: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
