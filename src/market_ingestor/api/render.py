"""Database rows and ticker states -> the JSON bodies of the query API (msgspec Structs, encoded in one pass).

Amounts stay exact: from the database they are PostgreSQL's own text of the ``numeric`` value, from the ticker
the ``Decimal`` of the event; both are written as JSON strings. Times: see :mod:`market_ingestor.api.params`.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

from market_ingestor.api.params import encode_cursor, from_pg, iso, ms
from market_ingestor.api.ticker_state import TickerState
from market_ingestor.windows import Interval


class KlineOut(msgspec.Struct, gc=False):
    open_time: str
    open_time_ms: int
    close_time: str
    close_time_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    trade_count: int
    taker_buy_volume: str
    taker_buy_quote_volume: str
    first_trade_id: str | None
    last_trade_id: str | None
    vwap: str
    closed: bool
    revision: int


class KlinePage(msgspec.Struct):
    exchange: str
    symbol: str
    interval: str
    data: list[KlineOut]
    next: str | None


class TradeOut(msgspec.Struct, gc=False):
    trade_id: str
    time: str
    time_ms: int
    price: str
    qty: str
    side: str


class TradePage(msgspec.Struct):
    exchange: str
    symbol: str
    data: list[TradeOut]
    next: str | None


class IndicatorOut(msgspec.Struct):
    open_time: str
    open_time_ms: int
    values: dict[str, Decimal]
    revision: int


class IndicatorPage(msgspec.Struct):
    exchange: str
    symbol: str
    interval: str
    name: str
    data: list[IndicatorOut]
    next: str | None


class LastTrade(msgspec.Struct):
    trade_id: str
    price: Decimal
    qty: Decimal
    side: str
    time: str
    time_ms: int


class BestQuote(msgspec.Struct):
    bid_price: Decimal
    bid_qty: Decimal
    ask_price: Decimal
    ask_qty: Decimal
    time: str
    time_ms: int


class TickerOut(msgspec.Struct):
    exchange: str
    symbol: str
    last_trade: LastTrade | None
    quote: BestQuote | None


class SymbolOut(msgspec.Struct):
    exchange: str
    symbol: str
    id: str
    stored: bool  # rows in the database
    live: bool  # in the live ticker


def _page(rows: Sequence[Any], limit: int) -> tuple[Sequence[Any], bool]:
    """The rows of this page, and whether there is a next one (the query asks for one row more)."""
    return (rows[:limit], True) if len(rows) > limit else (rows, False)


def kline_page(exchange: str, symbol: str, interval: Interval, rows: Sequence[Any], limit: int) -> KlinePage:
    rows, more = _page(rows, limit)
    data = []
    for row in rows:
        open_ns = from_pg(row[0])
        close_ns = interval.close_time(open_ns)
        data.append(
            KlineOut(iso(open_ns), ms(open_ns), iso(close_ns), ms(close_ns), row[1], row[2], row[3], row[4], row[5],
                     row[6], row[7], row[8], row[9], row[10], row[11], row[12], row[13], row[14])
        )  # fmt: skip
    cursor = encode_cursor("klines", rows[-1][0][0]) if more else None
    return KlinePage(exchange, symbol, interval.name, data, cursor)


def trade_page(exchange: str, symbol: str, rows: Sequence[Any], limit: int) -> TradePage:
    rows, more = _page(rows, limit)
    data = []
    for row in rows:
        ns = row[5]  # exact; row[0] is the same truncated to µs, the page's sort key
        data.append(TradeOut(row[1], iso(ns), ms(ns), row[2], row[3], row[4]))
    cursor = encode_cursor("trades", rows[-1][0][0], rows[-1][1]) if more else None
    return TradePage(exchange, symbol, data, cursor)


_values_decoder = msgspec.json.Decoder(dict[str, Decimal])


def indicator_page(
    exchange: str, symbol: str, interval: str, name: str, rows: Sequence[Any], limit: int
) -> IndicatorPage:
    rows, more = _page(rows, limit)
    data = []
    for row in rows:
        ns = from_pg(row[0])
        data.append(IndicatorOut(iso(ns), ms(ns), _values_decoder.decode(row[1]), row[2]))
    cursor = encode_cursor("indicators", rows[-1][0][0]) if more else None
    return IndicatorPage(exchange, symbol, interval, name, data, cursor)


def ticker(exchange: str, symbol: str, state: TickerState | None) -> TickerOut:
    trade = state.trade if state is not None else None
    quote = state.quote if state is not None else None
    return TickerOut(
        exchange,
        symbol,
        LastTrade(trade.trade_id, trade.price, trade.qty, trade.side, iso(trade.ts), ms(trade.ts)) if trade else None,
        BestQuote(quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty, iso(quote.ts), ms(quote.ts))
        if quote
        else None,
    )
