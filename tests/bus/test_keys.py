"""Topic of each event type, partition keys and event identities (``bus/topics.py``, ``bus/keys.py``)."""

import msgspec

from event_samples import EVENTS, TRADE
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics, topic_of
from market_ingestor.model import decode, encode


def test_each_event_type_has_its_topic_and_keys_keep_an_instrument_together():
    assert [topic_of(e) for e in EVENTS] == [
        Topics.TRADES,
        Topics.QUOTES,
        Topics.BOOK,
        Topics.BOOK,
        Topics.KLINES,
        Topics.INDICATORS,
        Topics.CONTROL,
    ]
    assert bus_key(TRADE) == "binance.NKNUSDT"
    assert bus_key(EVENTS[-1]) == "symbol.binance.BTCUSDT"


def test_event_ids_are_equal_for_resends_and_differ_between_events():
    assert event_id(TRADE) == event_id(decode(encode(TRADE)))
    assert event_id(TRADE) != event_id(msgspec.structs.replace(TRADE, trade_id="124"))
    kline = EVENTS[4]
    update = msgspec.structs.replace(kline, trade_count=4, closed=False)
    assert len({event_id(kline), event_id(update), event_id(msgspec.structs.replace(kline, revision=2))}) == 3
