"""Bybit v5 public spot. No recorded v5 session exists, so the frames below are hand-written in the shape Bybit
documents (v5 "Public Trade", "Orderbook", "Connect" and "Get Instruments Info" pages), plus the simulator round
trip."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from helpers import assert_not_normalized, assert_reads_client_frame, json_strategy, mutate_field, parsed_or_refused
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import ParseError, SymbolError
from market_ingestor.ingestor.book import BookSync, BookVerdict
from market_ingestor.ingestor.exchanges.base import ALL_CHANNELS, Channel, ParseContext
from market_ingestor.ingestor.exchanges.bybit import (
    PROTOCOL_CHATTER,
    SPEC,
    book_sequence,
    parse,
    parse_instruments,
    spec_for,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, Quote, Trade
from market_ingestor.simulator.bybit import DIALECT
from market_ingestor.simulator.dialect import SimBook, SimBookDelta, SimInstrument, SimQuote, SimTrade

D = Decimal
MS = 1_000_000
EMPTY = ParseContext(InstrumentRegistry(), 7)

TRADES = (
    '{"topic":"publicTrade.BTCUSDT","ts":1672304486868,"type":"snapshot","data":['
    '{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick",'
    '"i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false},'
    '{"T":1672304486866,"s":"BTCUSDT","S":"Sell","v":"0.25","p":"16578.49","i":"2290000000061666327",'
    '"BT":false,"RPI":false,"seq":1783284617}]}'
)
BOOK_SNAPSHOT = (
    '{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT",'
    '"b":[["16493.50","0.006"],["16493.00","0.100"]],"a":[["16611.00","0.029"],["16612.00","0.213"]],'
    '"u":18521288,"seq":7961638724},"cts":1672304484976}'
)


def _delta(u: int, bids: str = "[]", asks: str = "[]") -> str:
    return (
        f'{{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1672304485000,"data":{{"s":"BTCUSDT",'
        f'"b":{bids},"a":{asks},"u":{u},"seq":7961638730}},"cts":1672304484998}}'
    )


TOP_OF_BOOK = (
    '{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT",'
    '"b":[["16493.50","0.006"]],"a":[["16611.00","0.029"]],"u":4100525,"seq":7961638724},"cts":1672304484976}'
)
INSTRUMENTS_SPOT = (
    b'{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[{"symbol":"BTCUSDT","baseCoin":"BTC",'
    b'"quoteCoin":"USDT","innovation":"0","status":"Trading","marginTrading":"both","stTag":"0",'
    b'"lotSizeFilter":{"basePrecision":"0.000001","quotePrecision":"0.00000001","minOrderQty":"0.000048",'
    b'"maxOrderQty":"71.73956243","minOrderAmt":"1","maxOrderAmt":"2000000"},"priceFilter":{"tickSize":"0.01"},'
    b'"riskParameters":{"priceLimitRatioX":"0.01","priceLimitRatioY":"0.02"}},{"symbol":"XBTEUR","baseCoin":"XBT",'
    b'"quoteCoin":"EUR","status":"Trading"}]},"retExtInfo":{},"time":1672712468011}'
)
INSTRUMENTS_LINEAR = (
    b'{"retCode":0,"retMsg":"OK","result":{"category":"linear","nextPageCursor":"","list":['
    b'{"symbol":"BTCUSDT","contractType":"LinearPerpetual","status":"Trading","baseCoin":"BTC","quoteCoin":"USDT",'
    b'"launchTime":"1585526400000","deliveryTime":"0"},'
    b'{"symbol":"BTCPERP","contractType":"LinearPerpetual","status":"Trading","baseCoin":"BTC","quoteCoin":"USDC",'
    b'"deliveryTime":"0"},'
    b'{"symbol":"BTC-27DEC24","contractType":"LinearFutures","status":"Trading","baseCoin":"BTC",'
    b'"quoteCoin":"USDC","deliveryTime":"1735286400000"}]},"retExtInfo":{},"time":1672712468011}'
)


# --- frames in the documented shape -----------------------------------------------------------------------------


def test_a_trade_push_yields_every_trade_with_the_takers_side():
    ctx = ParseContext(InstrumentRegistry(), 42)
    assert parse(TRADES, ctx) == [
        Trade(
            "bybit",
            "BTCUSDT",
            "20f43950-d8dd-5b31-9112-a178eb6023af",
            D("16578.50"),
            D("0.001"),
            "buy",
            1672304486865 * MS,
            42,
        ),
        Trade("bybit", "BTCUSDT", "2290000000061666327", D("16578.49"), D("0.25"), "sell", 1672304486866 * MS, 42),
    ]
    assert SPEC.contiguous_trade_ids is False


def test_book_snapshot_and_deltas_keep_the_book_and_their_sequence():
    (snapshot,) = parse(BOOK_SNAPSHOT, EMPTY)
    assert snapshot == BookSnapshot(
        "bybit",
        "BTCUSDT",
        ((D("16493.50"), D("0.006")), (D("16493.00"), D("0.100"))),
        ((D("16611.00"), D("0.029")), (D("16612.00"), D("0.213"))),
        18521288,
        1672304484976 * MS,
        7,
    )
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    assert sync.on_snapshot(snapshot) is BookVerdict.OK
    deltas = [
        _delta(18521289, bids='[["16493.50","0"],["16494.00","1.5"]]'),
        _delta(18521290, asks='[["16611.00","0.030"]]'),
    ]
    events = [event for frame in deltas for event in parse(frame, EMPTY)]
    assert events[0] == BookDelta(
        "bybit",
        "BTCUSDT",
        ((D("16493.50"), D("0")), (D("16494.00"), D("1.5"))),
        (),
        18521289,
        18521289,
        1672304484998 * MS,
        7,
    )
    assert [sync.on_delta(e) for e in events if isinstance(e, BookDelta)] == [BookVerdict.OK] * 2
    assert sync.book.top_text(2) == (
        [("16494.00", "1.5"), ("16493.00", "0.100")],
        [("16611.00", "0.030"), ("16612.00", "0.213")],
    )
    (skipping,) = parse(_delta(18521292), EMPTY)  # 18521291 was lost
    assert isinstance(skipping, BookDelta) and sync.on_delta(skipping) is BookVerdict.GAP


def test_a_snapshot_with_u_1_after_a_restart_resets_the_book():
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    (before,) = parse(BOOK_SNAPSHOT, EMPTY)
    assert isinstance(before, BookSnapshot) and sync.on_snapshot(before) is BookVerdict.OK
    (older,) = parse(_delta(18521289), EMPTY)
    assert isinstance(older, BookDelta) and sync.on_delta(older) is BookVerdict.OK
    restart = BOOK_SNAPSHOT.replace('"u":18521288', '"u":1').replace(',["16493.00","0.100"]', "")
    (snapshot,) = parse(restart, EMPTY)
    assert isinstance(snapshot, BookSnapshot) and sync.on_snapshot(snapshot) is BookVerdict.OK
    assert sync.book.top_text(5)[0] == [("16493.50", "0.006")]
    (delta,) = parse(_delta(2), EMPTY)
    assert isinstance(delta, BookDelta) and sync.on_delta(delta) is BookVerdict.OK


@pytest.mark.parametrize(
    ("last_seq", "u", "continues"), [(10, 11, True), (10, 12, False), (10, 10, False), (1, 2, True)]
)
def test_sequence_rule(last_seq, u, continues):
    assert book_sequence(last_seq, BookDelta("bybit", "X", (), (), u, u, 0, 0)) is continues


def test_no_checksum_and_resync_by_resubscribing():
    assert SPEC.book_checksum is None and SPEC.book_resync == "resubscribe" and SPEC.book_snapshot_path is None


def test_top_of_book_is_a_quote():
    assert parse(TOP_OF_BOOK, EMPTY) == [
        Quote("bybit", "BTCUSDT", D("16493.50"), D("0.006"), D("16611.00"), D("0.029"), 1672304484976 * MS, 7, 4100525)
    ]
    without_cts = TOP_OF_BOOK.replace(',"cts":1672304484976', "")
    assert parse(without_cts, EMPTY)[0].ts == 1672304484978 * MS


@pytest.mark.parametrize(
    "frame",
    [
        '{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","op":"ping"}',
        '{"success":true,"ret_msg":"pong","conn_id":"465772b1","req_id":"","op":"ping"}',
        '{"args":["1672916271846"],"op":"pong"}',
        '{"success":true,"ret_msg":"subscribe","conn_id":"2324d924","req_id":"10001","op":"subscribe"}',
        # the retired v2 API's ack and pong: the op is echoed under "request"
        '{"success":true,"ret_msg":"","conn_id":"c0a8-1","request":{"op":"subscribe","args":["trade.BTCUSD"]}}',
        '{"success":true,"ret_msg":"pong","conn_id":"c0a8-1","request":{"op":"ping","args":null}}',
    ],
)
def test_op_replies_are_protocol_chatter_and_parse_to_nothing(frame):
    assert parse(frame, EMPTY) == []
    assert SPEC.protocol_chatter == PROTOCOL_CHATTER == {"subscribe", "unsubscribe", "ping", "pong"}


@pytest.mark.parametrize(
    ("frame", "channel"),
    [
        (
            '{"topic":"tickers.BTCUSDT","ts":1673853746003,"type":"snapshot","cs":2588407389,"data":{"symbol":'
            '"BTCUSDT","lastPrice":"21109.77"}}',
            "tickers",
        ),
        (
            '{"topic":"kline.5.BTCUSDT","data":[{"start":1672324800000,"close":"16649.5"}],"ts":1672324988882,'
            '"type":"snapshot"}',
            "kline.5",
        ),
        # the retired v2 API (inverse perpetuals), in its documented formats
        (
            '{"topic":"trade.BTCUSD","data":[{"trade_time_ms":1583952000000,"timestamp":"2020-03-11T18:40:00.000Z",'
            '"symbol":"BTCUSD","side":"Buy","size":10,"price":7800.5,"tick_direction":"PlusTick",'
            '"trade_id":"a2b3c4d5-0000-5b7e-9f59-4a1c1dd4e3c1","cross_seq":1052816407}]}',
            "trade",
        ),
        (
            '{"topic":"orderBookL2_25.BTCUSD","type":"snapshot","data":[{"price":"7800.00","symbol":"BTCUSD",'
            '"id":78000000,"side":"Buy","size":32547}],"cross_seq":1052816407,"timestamp_e6":1583952000123456}',
            "orderBookL2_25",
        ),
        (
            '{"topic":"orderBookL2_25.BTCUSD","type":"delta","data":{"delete":[],"update":[{"price":"7800.00",'
            '"symbol":"BTCUSD","id":78000000,"side":"Buy","size":30000}],"insert":[]},"cross_seq":1052816408,'
            '"timestamp_e6":1583952000223456}',
            "orderBookL2_25",
        ),
    ],
)
def test_topics_not_normalized_are_reported_with_their_channel(frame, channel):
    assert_not_normalized(parse, frame, EMPTY, channel, "unhandled")


def test_a_successful_reply_to_another_op_is_reported():
    assert_not_normalized(parse, '{"success":true,"ret_msg":"","conn_id":"x","op":"auth"}', EMPTY, "auth", "unhandled")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (
            '{"success":false,"ret_msg":"Invalid topic: [x]","conn_id":"c","req_id":"","op":"subscribe"}',
            "refused subscribe: Invalid topic",
        ),
        ("[]", "malformed"),
        ("{}", "neither a topic push nor a reply"),
        ('{"topic":"publicTrade.BTCUSDT","ts":1,"type":"snapshot"}', "without data"),
        (TRADES.replace('"S":"Buy"', '"S":"buy"'), "neither Buy nor Sell"),
        (TRADES.replace('"v":"0.001"', '"v":"0"'), "positive"),
        (TRADES.replace('"T":1672304486865,', ""), "malformed"),
        (TRADES.replace('"s":"BTCUSDT","S":"Sell"', '"s":"BTC/USDT","S":"Sell"'), "not a spot symbol name"),
        (BOOK_SNAPSHOT.replace('"type":"snapshot"', '"type":"partial"'), "neither snapshot nor delta"),
        (BOOK_SNAPSHOT.replace('"16611.00","0.029"', '"16611.00","-1"'), "negative size"),
        (BOOK_SNAPSHOT.replace(',"cts":1672304484976', "").replace('"ts":1672304484978,', ""), "without a timestamp"),
        (TOP_OF_BOOK.replace('[["16611.00","0.029"]]', "[]"), "0 ask levels"),
    ],
)
def test_malformed_frames_raise_parse_error_naming_the_problem(frame, reason):
    with pytest.raises(ParseError, match=reason):
        parse(frame, EMPTY)


def test_subscribe_requests_carry_at_most_ten_topics():
    natives = ["BTCUSDT", "ethusdt", "SOLUSDT", "XRPUSDT"]
    frames = SPEC.subscribe(natives, ALL_CHANNELS)
    assert [json.loads(frame) for frame in frames] == [
        {
            "op": "subscribe",
            "args": [
                f"{t}.{n}"
                for n in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
                for t in ("publicTrade", "orderbook.1", "orderbook.50")
            ]
            + ["publicTrade.XRPUSDT"],
            "req_id": "subscribe-1",
        },
        {"op": "subscribe", "args": ["orderbook.1.XRPUSDT", "orderbook.50.XRPUSDT"], "req_id": "subscribe-2"},
    ]
    assert SPEC.unsubscribe(["BTCUSDT"], [Channel.TRADES]) == [
        '{"op":"unsubscribe","args":["publicTrade.BTCUSDT"],"req_id":"unsubscribe-1"}'
    ]


def test_spec_endpoints_and_keepalive():
    assert SPEC.ws_url == "wss://stream.bybit.com/v5/public/spot" and SPEC.rest_url == "https://api.bybit.com"
    assert SPEC.instruments_path == "/v5/market/instruments-info?category=spot"
    assert SPEC.keepalive_frame == '{"op":"ping"}' and SPEC.keepalive_interval_s == 20.0
    linear = spec_for("linear")
    assert linear.ws_url == "wss://stream.bybit.com/v5/public/linear"
    assert linear.instruments_path.startswith("/v5/market/instruments-info?category=linear")


def test_spot_instruments():
    assert parse_instruments(INSTRUMENTS_SPOT) == [
        Instrument("bybit", "BTCUSDT", "BTC", "USDT"),
        Instrument("bybit", "XBTEUR", "BTC", "EUR"),
    ]
    with pytest.raises(ParseError, match="retCode 10001: params error"):
        parse_instruments(b'{"retCode":10001,"retMsg":"params error","result":{},"retExtInfo":{},"time":1}')


def test_linear_instruments_name_perpetuals_and_futures():
    instruments = parse_instruments(INSTRUMENTS_LINEAR)
    assert [i.symbol for i in instruments] == ["BTCUSDT-PERP", "BTCUSDC-PERP", "BTCUSDC-241227"]
    linear = spec_for("linear")
    registry = InstrumentRegistry(instruments)
    frame = TRADES.replace('"s":"BTCUSDT","S":"Sell"', '"s":"BTCPERP","S":"Sell"')
    assert [e.symbol for e in linear.parse(frame, ParseContext(registry, 1))] == ["BTCUSDT-PERP", "BTCUSDC-PERP"]
    assert linear.native_symbol("BTCUSDC-241227", registry) == "BTC-27DEC24"
    with pytest.raises(ParseError, match="linear instrument listing"):
        linear.parse(TRADES, EMPTY)


def test_the_registry_folds_aliases_and_native_symbols_map_back():
    registry = InstrumentRegistry(parse_instruments(INSTRUMENTS_SPOT))
    frame = TRADES.replace('"BTCUSDT"', '"XBTEUR"')
    assert {e.symbol for e in parse(frame, ParseContext(registry, 1))} == {"BTCEUR"}
    assert SPEC.native_symbol("BTCEUR", registry) == "XBTEUR"
    assert SPEC.native_symbol("ETHUSDT", registry) == "ETHUSDT"
    with pytest.raises(SymbolError):
        SPEC.native_symbol("ETH-USDT", registry)


# --- simulator round trip ---------------------------------------------------------------------------------------


def test_rendered_trades_parse_back_batched_like_bybit():
    trades = [
        SimTrade(i, D("27000.5") + i, D("0.000001") * (i + 1), "buy" if i % 3 else "sell", (1700000000000 + i) * MS)
        for i in range(1030)
    ]
    frames = DIALECT.render_trades("BTCUSDT", trades)
    assert len(frames) == 2  # at most 1024 trades per push
    events = [event for frame in frames for event in parse(frame, EMPTY)]
    assert events == [Trade("bybit", "BTCUSDT", str(t.trade_id), t.price, t.qty, t.side, t.ts_ns, 7) for t in trades]
    assert "E-" not in frames[0]


def test_rendered_quote_parses_back():
    quote = SimQuote(D("100.5"), D("0.00000001"), D("100.6"), D("3.25"), 77, 1700000000000 * MS)
    assert parse(DIALECT.render_quote("BTCUSDT", quote), EMPTY) == [
        Quote("bybit", "BTCUSDT", D("100.5"), D("0.00000001"), D("100.6"), D("3.25"), 1700000000000 * MS, 7, 77)
    ]


def test_rendered_book_is_the_top_50_and_its_deltas_sync():
    bids = tuple((D(100) - D(i) / 10, D(i + 1)) for i in range(80))
    asks = tuple((D(101) + D(i) / 10, D(i + 1)) for i in range(80))
    book = SimBook(bids, asks, 900, 1700000000000 * MS)
    assert DIALECT.render_book_snapshot is not None
    (snapshot,) = parse(DIALECT.render_book_snapshot("BTCUSDT", book), EMPTY)
    assert snapshot == BookSnapshot("bybit", "BTCUSDT", bids[:50], asks[:50], 900, 1700000000000 * MS, 7)
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    assert sync.on_snapshot(snapshot) is BookVerdict.OK
    changes = [
        SimBookDelta(((D(100), D(0)),), (), 901, 901, 900, 1700000000001 * MS, book),
        SimBookDelta((), ((D("100.9"), D("2")),), 902, 902, 901, 1700000000002 * MS, book),
        SimBookDelta((), ((D(101), D(0)),), 904, 904, 902, 1700000000003 * MS, book),  # gap fault: 903 skipped
    ]
    deltas = [parse(DIALECT.render_book_delta("BTCUSDT", c), EMPTY)[0] for c in changes]
    assert deltas[1] == BookDelta("bybit", "BTCUSDT", (), ((D("100.9"), D(2)),), 902, 902, 1700000000002 * MS, 7)
    assert [sync.on_delta(d) for d in deltas if isinstance(d, BookDelta)] == [
        BookVerdict.OK,
        BookVerdict.OK,
        BookVerdict.GAP,
    ]
    assert sync.book.best_bid == (D("99.9"), D(2)) and sync.book.best_ask == (D("100.9"), D(2))
    # u is the book's update id after the push
    (covering,) = parse(DIALECT.render_book_delta("BTCUSDT", SimBookDelta((), (), 905, 906, 904, 0, book)), EMPTY)
    assert isinstance(covering, BookDelta) and covering.first_seq == covering.last_seq == 906


def test_rendered_instruments_parse_back():
    body = DIALECT.render_instruments([SimInstrument("BTC", "USDT", D("0.01"), D("0.000001"))])
    assert parse_instruments(body) == [Instrument("bybit", "BTCUSDT", "BTC", "USDT")]
    assert SPEC.instruments_path.startswith(DIALECT.instruments_path + "?")


@pytest.mark.parametrize("channels", [ALL_CHANNELS, (Channel.TRADES,), (Channel.QUOTES, Channel.BOOK)])
def test_subscribe_frames_are_understood_by_the_simulator(channels):
    natives = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
    for build, action in ((SPEC.subscribe, "subscribe"), (SPEC.unsubscribe, "unsubscribe")):
        seen = set()
        for frame in build(natives, channels):
            request = DIALECT.parse_client_frame(frame)
            assert request.action == action
            seen.update(request.subscriptions)
            (reply,) = request.replies
            assert json.loads(reply) == {
                "success": True,
                "ret_msg": action,
                "conn_id": json.loads(reply)["conn_id"],
                "req_id": json.loads(frame)["req_id"],
                "op": action,
            }
            assert parse(reply, EMPTY) == []
        assert seen == {(c, n) for n in natives for c in channels}


def test_ping_gets_bybits_pong():
    assert SPEC.keepalive_frame is not None
    request = DIALECT.parse_client_frame(SPEC.keepalive_frame)
    assert request.action == "ping"
    (pong,) = request.replies
    reply = json.loads(pong)
    assert reply == {"success": True, "ret_msg": "pong", "conn_id": reply["conn_id"], "op": "ping"}
    assert parse(pong, EMPTY) == []


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("garbage", "invalid request"),
        ('{"op":"subscribe","args":["orderbook.50.X"' + ',"publicTrade.X"' * 10 + "]}", "args size >10"),
        ('{"op":"subscribe","args":["nonsense.BTCUSDT"]}', "Invalid topic"),
        ('{"op":"auth","args":[]}', "unknown op"),
    ],
)
def test_invalid_client_frames_are_refused_like_bybit(frame, reason):
    request = DIALECT.parse_client_frame(frame)
    assert request.action == "invalid"
    (reply,) = request.replies
    assert json.loads(reply)["success"] is False and reason in json.loads(reply)["ret_msg"]
    with pytest.raises(ParseError, match="bybit refused"):
        parse(reply, EMPTY)


def test_valid_topics_the_simulator_does_not_feed_are_accepted():
    request = DIALECT.parse_client_frame('{"op":"subscribe","args":["tickers.BTCUSDT","kline.1.BTCUSDT"]}')
    assert request.action == "subscribe" and request.subscriptions == ()


# --- fuzzing ----------------------------------------------------------------------------------------------------

FIELDS = ["topic", "type", "ts", "cts", "data", "success", "ret_msg", "op", "T", "s", "S", "v", "p", "i", "b", "a", "u"]
json_values = json_strategy(st.sampled_from(FIELDS) | st.text(max_size=4), text_size=8, dict_size=5, max_leaves=15)
SAMPLE_FRAMES = [TRADES, BOOK_SNAPSHOT, _delta(5, bids='[["1","2"]]'), TOP_OF_BOOK]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(frame):
    parsed_or_refused(parse, frame, EMPTY)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["publicTrade.BTCUSDT", "orderbook.1.BTCUSDT", "orderbook.50.BTCUSDT"]))
def test_arbitrary_json_never_raises_anything_but_parse_error(value, topic):
    parsed_or_refused(parse, json.dumps(value), EMPTY)
    parsed_or_refused(parse, json.dumps({"topic": topic, "type": "delta", "ts": 1, "data": value}), EMPTY)


def _containers(value: object) -> list[dict[str, object]]:
    """Every object inside a frame (the frame, its data, each trade)."""
    if isinstance(value, dict):
        return [value] + [c for item in value.values() for c in _containers(item)]
    if isinstance(value, list):
        return [c for item in value for c in _containers(item)]
    return []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLE_FRAMES), st.data())
def test_mutated_real_frames_never_raise_anything_but_parse_error(frame, data):
    value = json.loads(frame)
    target = data.draw(st.sampled_from(_containers(value)))
    mutate_field(target, data, json_values)
    parsed_or_refused(parse, json.dumps(value), EMPTY)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | json_values.map(json.dumps))
def test_the_simulator_reads_any_client_frame(frame):
    assert_reads_client_frame(DIALECT, frame, ("subscribe", "unsubscribe", "ping", "invalid"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps({"retCode": 0, "result": v}).encode()))
def test_instrument_listings_parse_or_raise_parse_error(body):
    try:
        instruments = parse_instruments(body)
    except ParseError:
        return
    assert all(isinstance(item, Instrument) for item in instruments)
