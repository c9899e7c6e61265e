from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_samples import EVENTS, TRADE
from market_ingestor.model import (
    BookDelta,
    BookSnapshot,
    IndicatorValue,
    Kline,
    Quote,
    Trade,
    decode,
    decoder_for,
    encode,
)


def test_a_trade_encodes_to_the_documented_json_with_decimals_as_exact_strings():
    assert encode(TRADE) == (
        b'{"type":"trade","exchange":"binance","symbol":"NKNUSDT","trade_id":"123","price":"0.35280000",'
        b'"qty":"58.00000000","side":"buy","ts":1,"recv_ts":2}'
    )


def test_decimals_survive_the_round_trip_digit_for_digit():
    trade = msgspec.structs.replace(TRADE, price=Decimal("0.000000000000000001"), qty=Decimal("1E+3"))
    again = decode(encode(trade))
    assert again == trade
    assert isinstance(again, Trade)
    assert str(again.price) == "1E-18"


def test_a_json_number_price_is_read_exactly_not_through_float():
    data = (
        b'{"type":"trade","exchange":"x","symbol":"S","trade_id":"1",'
        b'"price":0.1,"qty":3,"side":"sell","ts":1,"recv_ts":1}'
    )
    trade = decode(data)
    assert isinstance(trade, Trade) and trade.price == Decimal("0.1")


def test_a_bad_side_is_a_validation_error_naming_the_field():
    data = encode(TRADE).replace(b'"buy"', b'"long"')
    with pytest.raises(msgspec.ValidationError, match="side"):
        decode(data)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_type_round_trips_through_the_tagged_decoder(event):
    assert decode(encode(event)) == event
    assert decoder_for(type(event)).decode(encode(event)) == event


@given(st.decimals(allow_nan=False, allow_infinity=False), st.decimals(allow_nan=False, allow_infinity=False))
def test_any_finite_decimal_round_trips(price, qty):
    trade = msgspec.structs.replace(TRADE, price=price, qty=qty)
    again = decode(encode(trade))
    assert (again.price, again.qty) == (price, qty)
    assert encode(again) == encode(trade)  # the text too (1E+3 is written "1000", and stays so)
    assert format(again.price, "f") == format(price, "f")


def test_a_book_delta_keeps_a_removed_levels_zero_as_the_exchange_wrote_it():
    delta = BookDelta(
        "binance", "BTCUSDT",
        ((Decimal("64000.01000000"), Decimal("0.00000000")), (Decimal("63999.99"), Decimal("0"))),
        ((Decimal("64000.02000000"), Decimal("0.000000010")),),
        10, 12, 1, 2,
    )  # fmt: skip
    assert encode(delta) == (
        b'{"type":"book_delta","exchange":"binance","symbol":"BTCUSDT",'
        b'"bids":[["64000.01000000","0.00000000"],["63999.99","0"]],"asks":[["64000.02000000","0.000000010"]],'
        b'"first_seq":10,"last_seq":12,"ts":1,"recv_ts":2,"prev_seq":null,"checksum":null}'
    )
    assert decode(encode(delta)) == delta


def test_a_book_snapshot_and_a_quote_keep_zero_sizes_in_plain_digits():
    snapshot = BookSnapshot("kraken", "BTCUSD", ((Decimal("1.5"), Decimal("0E-8")),), (), 9, 1, 2)
    assert b'"bids":[["1.5","0.00000000"]],"asks":[]' in encode(snapshot)
    quote = Quote("okx", "BTCUSDT", Decimal("1"), Decimal("0.00000000"), Decimal("0.0000001"), Decimal("0"), 5, 6)
    assert b'"bid_qty":"0.00000000","ask_price":"0.0000001","ask_qty":"0"' in encode(quote)


def test_a_kline_with_tiny_volumes_keeps_plain_digits():
    kline = msgspec.structs.replace(
        EVENTS[4],
        volume=Decimal("0.00000001"),
        quote_volume=Decimal("0.0000006400001"),
        taker_buy_volume=Decimal("0.00000000"),
        taker_buy_quote_volume=Decimal("0E-16"),
        high=Decimal("1E+2"),
    )
    text = encode(kline)
    assert b'"high":"100",' in text
    assert b'"volume":"0.00000001","quote_volume":"0.0000006400001",' in text
    assert b'"taker_buy_volume":"0.00000000","taker_buy_quote_volume":"0.0000000000000000",' in text
    assert b"E-" not in text and b"E+" not in text


def test_indicator_values_keep_plain_digits():
    value = IndicatorValue(
        "binance", "BTCUSDT", "1m", "macd_12_26_9", 0, {"hist": Decimal("-0E-8"), "macd": Decimal("1.0E-7")}
    )
    assert b'"values":{"hist":"-0.00000000","macd":"0.00000010"}' in encode(value)


def test_the_ohlcv_fields_are_declared_once_in_order_by_every_kline_shape():
    from market_ingestor.indicators.series import Bar
    from market_ingestor.model import OHLCV_FIELDS
    from market_ingestor.streams.klines import _Agg

    for shape in (Kline, _Agg, Bar):
        fields = shape.__struct_fields__
        start = fields.index(OHLCV_FIELDS[0])
        assert fields[start : start + len(OHLCV_FIELDS)] == OHLCV_FIELDS, shape.__name__
