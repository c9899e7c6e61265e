"""Bus records -> updates, and the latest state, pure."""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest
from push_helpers import indicator, kline, quote, trade

from market_ingestor.bus.records import batch_value
from market_ingestor.bus.topics import Topics
from market_ingestor.model import encode
from market_ingestor.push.updates import LatestState, to_update, to_updates


def update_of(event):  # type: ignore[no-untyped-def]
    topic = {"trade": Topics.TRADES, "quote": Topics.QUOTES, "kline": Topics.KLINES, "indicator": Topics.INDICATORS}
    return to_update(topic[type(event).__struct_config__.tag], encode(event))


@pytest.mark.parametrize(
    ("event", "pair", "conflate"),
    [
        (trade("BTCUSDT", 1), ("trade", "binance.BTCUSDT"), False),
        (quote("BTCUSDT", 1), ("quote", "binance.BTCUSDT"), True),
        (kline("BTCUSDT", "5m"), ("kline.5m", "binance.BTCUSDT"), True),
        (kline("BTCUSDT", "5m", closed=True), ("kline.5m", "binance.BTCUSDT"), False),
        (indicator("BTCUSDT"), ("indicator.rsi_14", "binance.BTCUSDT"), False),
    ],
)
def test_each_topic_maps_to_its_channel_and_symbol_and_conflation(event, pair, conflate):
    update = update_of(event)
    assert (update.pair, update.conflate) == (pair, conflate)


def test_closed_klines_and_indicator_values_say_what_they_are_a_revision_of():
    pair = ("kline.5m", "binance.BTCUSDT")
    closed = update_of(kline("BTCUSDT", "5m", minute=2, closed=True))
    assert closed.revision_of == (pair, kline("BTCUSDT", minute=2).open_time)
    corrected = msgspec.structs.replace(kline("BTCUSDT", "5m", minute=2, closed=True), revision=3)
    assert update_of(corrected).revision_of == closed.revision_of
    assert update_of(kline("BTCUSDT", "5m", minute=3, closed=True)).revision_of != closed.revision_of
    value = indicator("BTCUSDT", minute=2)
    assert update_of(value).revision_of == (("indicator.rsi_14", "binance.BTCUSDT"), "1m", value.open_time)
    for event in (kline("BTCUSDT", "5m"), quote("BTCUSDT", 1), trade("BTCUSDT", 1)):
        assert update_of(event).revision_of is None


def test_the_frame_carries_the_record_unchanged():
    event = kline("ETHUSDT", closed=True)
    update = update_of(event)
    assert update.message.payload.endswith(b',"data":' + encode(event) + b"}")


@pytest.mark.parametrize(
    "value",
    [b"{oops", b'{"type":"trade","exchange":"binance"}', encode(quote("BTCUSDT", 1))],
)
def test_a_record_that_is_not_the_topics_type_is_a_validation_error(value):
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        to_update(Topics.TRADES, value)


def test_state_keeps_the_newest_kline_and_ignores_a_late_correction_of_an_older_window():
    state = LatestState(10)
    pair = ("kline.1m", "binance.BTCUSDT")
    state.offer(update_of(kline("BTCUSDT", minute=0, trades=1)))
    state.offer(update_of(kline("BTCUSDT", minute=0, trades=2)))
    assert state.messages(pair) == [(update_of(kline("BTCUSDT", minute=0, trades=2)).message, True)]
    state.offer(update_of(kline("BTCUSDT", minute=0, closed=True)))
    state.offer(update_of(kline("BTCUSDT", minute=1, trades=1)))
    late = msgspec.structs.replace(kline("BTCUSDT", minute=0, closed=True), revision=1)
    state.offer(update_of(late))
    assert state.messages(pair) == [(update_of(kline("BTCUSDT", minute=1, trades=1)).message, True)]


def test_state_keeps_one_indicator_value_per_interval_and_no_trades():
    state = LatestState(10)
    one_minute = indicator("BTCUSDT", minute=3)
    five_minutes = msgspec.structs.replace(indicator("BTCUSDT"), interval="5m")
    for event in (indicator("BTCUSDT", minute=2), one_minute, five_minutes, trade("BTCUSDT", 1)):
        state.offer(update_of(event))
    assert state.messages(("indicator.rsi_14", "binance.BTCUSDT")) == [
        (update_of(one_minute).message, False),
        (update_of(five_minutes).message, False),
    ]
    assert state.messages(("trade", "binance.BTCUSDT")) == []


def test_state_is_bounded_forgetting_the_least_recently_updated_pair():
    state = LatestState(2)
    for symbol in ("AUSDT", "BUSDT"):
        state.offer(update_of(quote(symbol, 1)))
    state.offer(update_of(quote("AUSDT", 2)))  # A is now the most recent
    state.offer(update_of(quote("CUSDT", 1)))
    assert len(state) == 2
    assert state.messages(("quote", "binance.BUSDT")) == []
    assert state.messages(("quote", "binance.AUSDT")) == [(update_of(quote("AUSDT", 2)).message, True)]


def test_a_batch_record_gives_an_update_per_event_in_order_skipping_the_bad_ones():
    good = [trade("BTCUSDT", 1), trade("ETHUSDT", 2), trade("BTCUSDT", 3)]
    bad = b'{"type":"trade","exchange":"binance"}'
    value = batch_value([encode(good[0]), bad, encode(good[1]), encode(quote("BTCUSDT", 1)), encode(good[2])])
    updates, problems = to_updates(Topics.TRADES, value)
    assert updates == [update_of(event) for event in good]
    assert problems == ["Object missing required field `symbol`", "Invalid value 'quote' - at `$.type`"]
    updates, problems = to_updates(Topics.TRADES, b"[{oops")
    assert updates == [] and len(problems) == 1 and problems[0].startswith("not JSON: ")
    assert to_updates(Topics.TRADES, encode(good[0])) == ([update_of(good[0])], [])  # one event, not an array


def test_clients_get_zero_and_tiny_amounts_with_the_exchanges_digits():
    """What the gateway sends (live and as the latest state) carries "0.00000000", never "0E-8"."""
    zero_bid = msgspec.structs.replace(quote("BTCUSDT", 1), bid_qty=Decimal("0.00000000"))
    tiny = msgspec.structs.replace(kline("BTCUSDT"), volume=Decimal("0.00000010"), taker_buy_volume=Decimal("0E-8"))
    state = LatestState(10)
    sent = []
    for topic, event in ((Topics.QUOTES, zero_bid), (Topics.KLINES, tiny)):
        (update,), problems = to_updates(topic, batch_value([encode(event)]))
        assert problems == []
        state.offer(update)
        sent.append(json.loads(update.message.payload)["data"])
    assert sent[0]["bid_qty"] == "0.00000000"
    assert (sent[1]["volume"], sent[1]["taker_buy_volume"]) == ("0.00000010", "0.00000000")
    ((held, _),) = state.messages(("quote", "binance.BTCUSDT"))
    assert b'"bid_qty":"0.00000000"' in held.payload and b'"bid_qty":"0.00000000"' in held.wire
