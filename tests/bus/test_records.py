"""Batch records (pure): filling within the bounds, the value format, identities, decoding with dead letters."""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest

from market_ingestor.bus.records import (
    BatchDecoder,
    RecordBuilder,
    batch_id,
    batch_value,
    is_batched,
    split_events,
)
from market_ingestor.model import Kline, Quote, Trade, encode


def trade(n: int, symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, str(n), Decimal("27123.45000000"), Decimal("0.00100000"), "buy", n, n + 1)


@pytest.mark.parametrize(
    ("topic", "batched"),
    [
        ("market.trades", True),
        ("market.quotes", True),
        ("market.book", True),
        ("market.klines", True),
        ("market.indicators", True),
        ("staging.market.trades", True),
        ("market.control", False),
        ("market.status", False),
        ("market.deadletter", False),
        ("staging.market.control", False),
        ("market.trades.flat", False),
        ("xmarket.trades", False),
    ],
)
def test_which_topics_carry_batch_records(topic: str, batched: bool) -> None:
    assert is_batched(topic) is batched


def test_a_batch_value_is_the_json_array_of_the_events_with_their_exact_digits() -> None:
    events = [trade(1), trade(2)]
    value = batch_value(encode(event) for event in events)
    decoded = json.loads(value)
    assert [item["trade_id"] for item in decoded] == ["1", "2"]
    assert decoded[0]["price"] == "27123.45000000"
    assert BatchDecoder(Trade).decode(value) == events


def test_a_single_object_record_reads_as_a_batch_of_one() -> None:
    assert BatchDecoder(Trade).decode(encode(trade(7))) == [trade(7)]


def test_the_builder_closes_at_the_event_bound() -> None:
    builder = RecordBuilder(max_events=3, max_bytes=1 << 20)
    for n in range(3):
        value = encode(trade(n))
        assert builder.fits(value)
        builder.add("binance.BTCUSDT", value)
    assert not builder.fits(encode(trade(3)))
    assert len(json.loads(builder.value())) == 3


def test_the_builder_closes_at_the_byte_bound_and_its_size_is_exact() -> None:
    value = encode(trade(1))
    limit = 2 * len(value) + 3  # "[" a "," b "]"
    builder = RecordBuilder(max_events=100, max_bytes=limit)
    builder.add("k", value)
    assert builder.fits(value)
    builder.add("k", value)
    assert builder.size == len(builder.value()) == limit
    assert not builder.fits(b"{}")


def test_an_event_larger_than_the_byte_bound_makes_a_record_of_its_own() -> None:
    builder = RecordBuilder(max_events=100, max_bytes=10)
    big = encode(trade(1))
    assert builder.fits(big)
    builder.add("k", big)
    assert not builder.fits(b"{}")
    assert json.loads(builder.value()) == [json.loads(big)]


def test_the_record_key_is_the_first_events_key() -> None:
    builder = RecordBuilder(max_events=10, max_bytes=1 << 20)
    builder.add("binance.BTCUSDT", encode(trade(1)))
    builder.add("binance.ETHUSDT", encode(trade(2, "ETHUSDT")))
    assert builder.key == "binance.BTCUSDT"


def test_batch_identity_is_deterministic_and_order_sensitive() -> None:
    assert batch_id(["a", "b"]) == batch_id(["a", "b"])
    assert batch_id(["a", "b"]) != batch_id(["b", "a"])
    assert batch_id(["ab"]) != batch_id(["a", "b"])
    builder = RecordBuilder(max_events=10, max_bytes=1 << 20)
    builder.add("k", b"{}", "a")
    builder.add("k", b"{}", "b")
    assert builder.identity() == batch_id(["a", "b"])
    builder.add("k", b"{}")  # one event without an identity: the batch has none
    assert builder.identity() is None


def test_split_keeps_the_good_events_and_names_the_bad_ones() -> None:
    good = encode(trade(1))
    value = b"[" + good + b',{"type":"trade","exchange":"x"},' + good + b"]"
    decoder = BatchDecoder(Trade)
    with pytest.raises(msgspec.ValidationError):
        decoder.decode(value)
    events, bad = decoder.split(value)
    assert events == [trade(1), trade(1)]
    assert bad == [(b'{"type":"trade","exchange":"x"}', bad[0][1])]
    assert "not a trade" in bad[0][1] and "symbol" in bad[0][1]


def test_a_decoder_of_a_union_reads_both_types_and_names_them_in_its_reasons() -> None:
    quote = Quote("binance", "BTCUSDT", Decimal("1"), Decimal("2"), Decimal("3"), Decimal("4"), 5, 6)
    value = batch_value([encode(trade(1)), encode(quote), b'{"type":"kline"}'])
    decoder: BatchDecoder[Trade | Quote] = BatchDecoder(Trade | Quote)  # type: ignore[arg-type]
    events, bad = decoder.split(value)
    assert events == [trade(1), quote]
    assert [reason.split(":")[0] for _, reason in bad] == ["not a trade | quote"]


def test_split_of_a_value_that_is_not_json_dead_letters_it_whole() -> None:
    events, bad = BatchDecoder(Kline).split(b"\xff not json")
    assert events == []
    assert bad[0][0] == b"\xff not json" and bad[0][1].startswith("not JSON")


def test_split_events_gives_each_events_text() -> None:
    value = batch_value([encode(trade(1)), encode(trade(2))])
    assert split_events(value) == [encode(trade(1)), encode(trade(2))]
    assert split_events(encode(trade(3))) == [encode(trade(3))]
