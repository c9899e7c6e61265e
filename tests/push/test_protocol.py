"""The client protocol, pure: requests in, validated requests or coded errors out; replies and update frames."""

from __future__ import annotations

import json

import msgspec
import pytest
from push_helpers import trade
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from market_ingestor.model import encode
from market_ingestor.push.protocol import (
    Ping,
    PushRequestError,
    Subscribe,
    Subscribed,
    Unsubscribe,
    dropped_notice,
    encode_reply,
    error_reply,
    known_channels,
    parse_request,
    pong_reply,
    update_message,
)

CHANNELS = known_channels(["1m", "5m"], ["rsi_14"])


def parse(body: object, max_bytes: int = 4096) -> object:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(data, max_bytes, CHANNELS)


def test_known_channels_are_trades_quotes_and_the_configured_klines_and_indicators():
    assert {"trade", "quote", "kline.1m", "kline.5m", "indicator.rsi_14"} == CHANNELS


def test_a_subscribe_request_names_every_channel_symbol_pair_once():
    request = parse(
        {
            "action": "subscribe",
            "channels": ["trade", "kline.1m", "trade"],
            "symbols": ["binance.BTCUSDT", "okx.BTCUSD-PERP"],
            "id": 7,
        }
    )
    assert isinstance(request, Subscribe) and request.id == 7
    assert request.pairs() == [
        ("trade", "binance.BTCUSDT"),
        ("trade", "okx.BTCUSD-PERP"),
        ("kline.1m", "binance.BTCUSDT"),
        ("kline.1m", "okx.BTCUSD-PERP"),
    ]


def test_unsubscribe_and_ping_parse_to_their_types():
    assert isinstance(
        parse({"action": "unsubscribe", "channels": ["quote"], "symbols": ["kraken.BTCUSD"]}), Unsubscribe
    )
    assert parse({"action": "ping", "id": "a"}) == Ping(action="ping", id="a")


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        (b"{not json", "bad_json", "not valid JSON"),
        (b"[1, 2]", "bad_request", "expected a JSON object, got list"),
        (
            {"channels": ["trade"]},
            "unknown_action",
            "unknown action None (expected one of: subscribe, unsubscribe, ping)",
        ),
        ({"action": "dance"}, "unknown_action", "unknown action 'dance'"),
        ({"action": "subscribe", "channels": ["trade"]}, "bad_request", "missing required field `symbols`"),
        ({"action": "subscribe", "channels": "trade", "symbols": ["binance.BTCUSDT"]}, "bad_request", "$.channels"),
        ({"action": "ping", "extra": 1}, "bad_request", "unknown field `extra`"),
        ({"action": "subscribe", "channels": [], "symbols": ["binance.BTCUSDT"]}, "bad_request", "at least one"),
        (
            {"action": "subscribe", "channels": ["kline.3m", "trade", "book"], "symbols": ["binance.BTCUSDT"]},
            "unknown_channel",
            "unknown channel(s) 'kline.3m', 'book' (known: indicator.rsi_14, kline.1m, kline.5m, quote, trade)",
        ),
        (
            {"action": "unsubscribe", "channels": ["trade"], "symbols": ["BTCUSDT", "binance.btcusdt"]},
            "bad_symbol",
            "malformed symbol(s) 'BTCUSDT', 'binance.btcusdt': write exchange.SYMBOL",
        ),
    ],
)
def test_a_bad_request_is_a_coded_error_with_a_reason(body, code, reason):
    with pytest.raises(PushRequestError) as caught:
        parse(body)
    assert caught.value.code == code
    assert reason in caught.value.reason


def test_an_oversize_message_is_refused_before_it_is_parsed():
    with pytest.raises(PushRequestError) as caught:
        parse(b"x" * 513, max_bytes=512)
    assert caught.value.code == "oversize"
    assert caught.value.reason == "message of 513 bytes is over the limit of 512 bytes"
    assert isinstance(parse({"action": "ping", "id": "x" * 100}, max_bytes=512), Ping)


def test_an_error_keeps_the_request_id_when_there_is_one():
    with pytest.raises(PushRequestError) as caught:
        parse({"action": "subscribe", "channels": ["nope"], "symbols": ["binance.BTCUSDT"], "id": "req-1"})
    reply = json.loads(error_reply(caught.value).payload)
    assert reply == {"type": "error", "code": "unknown_channel", "reason": caught.value.reason, "id": "req-1"}


def test_replies_are_json_with_a_type():
    assert json.loads(encode_reply(Subscribed(["trade"], ["binance.BTCUSDT"], 1)).payload) == {
        "type": "subscribed",
        "channels": ["trade"],
        "symbols": ["binance.BTCUSDT"],
        "subscriptions": 1,
    }
    assert json.loads(dropped_notice(12).payload) == {"type": "dropped", "count": 12}
    pong = json.loads(pong_reply(Ping(action="ping", id=3)).payload)
    assert pong["type"] == "pong" and pong["id"] == 3 and isinstance(pong["ts"], int)


def test_an_update_embeds_the_record_as_it_is_in_one_websocket_frame_for_everyone():
    record = encode(trade("BTCUSDT", 1))
    message = update_message("trade", "binance.BTCUSDT", record)
    decoded = msgspec.json.decode(message.payload)
    assert decoded["type"] == "update" and decoded["channel"] == "trade" and decoded["symbol"] == "binance.BTCUSDT"
    assert message.payload.endswith(b',"data":' + record + b"}")
    assert decoded["data"]["price"] == "101.5"  # Decimal as a string
    # The frame a client's websockets would parse: FIN + text opcode, unmasked, the payload after the length.
    parser = ClientProtocol(parse_uri("ws://localhost/"), state=State.OPEN)
    parser.receive_data(message.wire)
    (frame,) = parser.events_received()
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.TEXT, True, message.payload)
