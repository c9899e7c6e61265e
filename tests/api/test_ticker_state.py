"""The ticker's pure update rule: which event is "latest", and how records of trades and quotes (batch records,
with malformed events among them) fold into the states of the instruments they touch."""

from __future__ import annotations

from decimal import Decimal

from api_helpers import T, quote, trade

from market_ingestor.api.ticker_state import TickerState, TickerUpdates
from market_ingestor.bus.records import batch_value
from market_ingestor.model import Quote, Trade, encode


def test_the_latest_event_is_the_newest_by_exchange_time():
    state = TickerState().updated(trade("1", T + 2, "10")).updated(trade("2", T + 1, "11"))
    assert state.trade is not None and state.trade.trade_id == "1"  # the late one does not replace it
    state = state.updated(trade("3", T + 2, "12"))
    assert state.trade is not None and state.trade.trade_id == "3"  # same time: the later arrival
    state = state.updated(quote(T + 5, "9", "13")).updated(quote(T + 4, "1", "2"))
    assert state.quote is not None and state.quote.bid_price == Decimal(9)
    assert state.trade.trade_id == "3"


def record(*events: Trade | Quote | bytes) -> bytes:
    return batch_value(event if isinstance(event, bytes) else encode(event) for event in events)


def test_records_fold_into_the_new_state_of_each_touched_instrument_from_the_current_one():
    held = {"binance.BTCUSDT": TickerState(trade("0", T + 50, "41000"), None)}
    updates = TickerUpdates()
    touched = updates.fold(
        [
            record(trade("1", T + 10, "42000"), trade("2", T + 20, "42001"), trade("e1", T, "3000", "ETHUSDT")),
            record(quote(T + 30, "42000.10", "42000.30")),
            record(trade("e2", T + 1, "3001", "ETHUSDT"), trade("e0", T - 1, "2999", "ETHUSDT")),  # e0 is late
        ],
        held.get,
    )
    assert set(touched) == {"binance.BTCUSDT", "binance.ETHUSDT"}
    btc, eth = touched["binance.BTCUSDT"], touched["binance.ETHUSDT"]
    # The held trade (T + 50) is newer than both of the records': it stays; the quote is new.
    assert btc.trade == held["binance.BTCUSDT"].trade
    assert btc.quote is not None and (btc.quote.bid_price, btc.quote.ask_price) == (
        Decimal("42000.10"),
        Decimal("42000.30"),
    )
    assert eth == TickerState(trade("e2", T + 1, "3001", "ETHUSDT"), None)
    assert held == {"binance.BTCUSDT": TickerState(trade("0", T + 50, "41000"), None)}  # fold itself writes nothing
    assert updates.malformed == 0


def test_malformed_events_are_skipped_and_counted_and_the_good_ones_of_their_record_kept():
    updates = TickerUpdates()
    touched = updates.fold(
        [
            b"not json at all",
            record(b'{"type": "trade", "price": "NaN"}', trade("1", T, "42000.00"), b'{"type": "kline"}'),
        ],
        lambda key: None,
    )
    assert touched == {"binance.BTCUSDT": TickerState(trade("1", T, "42000.00"), None)}
    assert updates.malformed == 3
