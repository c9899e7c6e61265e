"""Binance spot: the parser against the real recorded session, the book-sync rules, subscribe frames, and the
simulator dialect round trip. Expected numbers come from an independent reading of the recording (stdlib json
with Decimal), never from the code under test."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest
from helpers import (
    assert_not_normalized,
    assert_reads_client_frame,
    events_or_not_normalized,
    json_strategy,
    mutate_field,
    parsed_or_refused,
    recording,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import NotNormalized, ParseError, SymbolError
from market_ingestor.ingestor.book import BookSync, BookVerdict
from market_ingestor.ingestor.capture import SessionRecord, received_frames, rest_bodies
from market_ingestor.ingestor.exchanges.base import ALL_CHANNELS, Channel, ParseContext
from market_ingestor.ingestor.exchanges.binance import (
    PROTOCOL_CHATTER,
    SPEC,
    book_sequence,
    book_snapshot_path,
    parse,
    parse_book_snapshot,
    parse_instruments,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, MarketEvent, Quote, Trade
from market_ingestor.simulator.binance import DIALECT
from market_ingestor.simulator.dialect import SimBook, SimBookDelta, SimInstrument, SimQuote, SimTrade

WS_FILE = "BINANCE.ws.1.0"
REST_FILE = "BINANCE.0"
D = Decimal
EMPTY = ParseContext(InstrumentRegistry(), 7)


@pytest.fixture(scope="module")
def exchange_info() -> dict[str, Any]:
    record = next(rest_bodies(recording(REST_FILE)))
    body: dict[str, Any] = json.loads(record.payload)
    return body


@pytest.fixture(scope="module")
def registry() -> InstrumentRegistry:
    return InstrumentRegistry(parse_instruments(next(rest_bodies(recording(REST_FILE))).payload.encode()))


@pytest.fixture(scope="module")
def recorded() -> list[SessionRecord]:
    return list(received_frames(recording(WS_FILE)))


@pytest.fixture(scope="module")
def outcomes(recorded: list[SessionRecord], registry: InstrumentRegistry) -> list[list[MarketEvent] | NotNormalized]:
    return [
        events_or_not_normalized(parse, record.payload, ParseContext(registry, record.recv_ts_ns))
        for record in recorded
    ]


@pytest.fixture(scope="module")
def parsed(outcomes: list[list[MarketEvent] | NotNormalized]) -> list[list[MarketEvent]]:
    """Each frame's events; [] for the frames not turned into events (klines: checked apart)."""
    return [outcome if isinstance(outcome, list) else [] for outcome in outcomes]


def _raw(record: SessionRecord) -> dict[str, Any]:
    """The independent reading: stdlib json, numbers and numeric strings as Decimal."""
    frame: dict[str, Any] = json.loads(record.payload, parse_float=Decimal)
    return frame


def _levels(pairs: list[list[str]]) -> tuple[tuple[Decimal, Decimal], ...]:
    return tuple((D(p), D(q)) for p, q in pairs)


# --- the recorded session ---------------------------------------------------------------------------------------


def test_recorded_trades_have_exact_counts_and_volumes_per_symbol(recorded, parsed):
    expected_count: Counter[str] = Counter()
    expected_volume: dict[str, Decimal] = defaultdict(Decimal)
    for record in recorded:
        data = _raw(record)["data"]
        if data.get("e") == "aggTrade":
            expected_count[data["s"]] += 1
            expected_volume[data["s"]] += D(data["q"])
    trades = [event for events in parsed for event in events if isinstance(event, Trade)]
    count = Counter(trade.symbol for trade in trades)
    volume: dict[str, Decimal] = defaultdict(Decimal)
    for trade in trades:
        volume[trade.symbol] += trade.qty
    assert count == expected_count == {"NKNUSDT": 1, "LRCBTC": 1}
    assert volume == expected_volume == {"NKNUSDT": D("58"), "LRCBTC": D("177")}


def test_a_recorded_agg_trade_normalizes_to_its_full_event(recorded, parsed):
    index = next(i for i, record in enumerate(recorded) if '"lrcbtc@aggTrade"' in record.payload)
    assert parsed[index] == [
        Trade(
            exchange="binance",
            symbol="LRCBTC",
            trade_id="9213679",
            price=D("0.00000638"),
            qty=D("177.00000000"),
            side="buy",  # m=false: the buyer was the taker
            ts=1633998534486 * 1_000_000,
            recv_ts=recorded[index].recv_ts_ns,
        )
    ]
    assert str(parsed[index][0].price) == "0.00000638"  # the exchange's digits, not a float's


def test_every_recorded_book_ticker_is_a_quote_with_the_frames_values(recorded, parsed):
    per_symbol: Counter[str] = Counter()
    for record, events in zip(recorded, parsed, strict=True):
        frame = _raw(record)
        if not frame["stream"].endswith("@bookTicker"):
            continue
        data = frame["data"]
        per_symbol[data["s"]] += 1
        assert events == [
            Quote(
                "binance",
                data["s"],
                D(data["b"]),
                D(data["B"]),
                D(data["a"]),
                D(data["A"]),
                ts=record.recv_ts_ns,
                recv_ts=record.recv_ts_ns,
                seq=data["u"],
            )
        ]
    assert per_symbol == {"NKNUSDT": 74, "LRCBTC": 9, "BLZETH": 1}


def test_first_recorded_book_ticker_spot_check(recorded, parsed):
    index = next(i for i, record in enumerate(recorded) if '"nknusdt@bookTicker"' in record.payload)
    (quote,) = parsed[index]
    assert isinstance(quote, Quote)
    assert (quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty, quote.seq) == (
        D("0.35210000"),
        D("672.00000000"),
        D("0.35260000"),
        D("3199.00000000"),
        499869768,
    )


def test_every_recorded_depth_update_is_a_delta_with_the_frames_levels(recorded, parsed):
    per_symbol: Counter[str] = Counter()
    for record, events in zip(recorded, parsed, strict=True):
        frame = _raw(record)
        if "@depth" not in frame["stream"]:
            continue
        data = frame["data"]
        per_symbol[data["s"]] += 1
        assert events == [
            BookDelta(
                "binance",
                data["s"],
                _levels(data["b"]),
                _levels(data["a"]),
                first_seq=data["U"],
                last_seq=data["u"],
                ts=data["E"] * 1_000_000,
                recv_ts=record.recv_ts_ns,
            )
        ]
    assert per_symbol == {"NKNUSDT": 150, "LRCBTC": 15, "BLZETH": 10, "RUNEEUR": 2}


def test_first_recorded_depth_update_spot_check(parsed):
    (delta,) = parsed[0]
    assert isinstance(delta, BookDelta)
    assert (delta.symbol, delta.first_seq, delta.last_seq, delta.prev_seq) == ("NKNUSDT", 499869750, 499869752, None)
    assert delta.bids[0] == (D("0.35130000"), D("6195.00000000")) and delta.asks == ()
    assert delta.ts == 1633998512068_000_000


def test_klines_are_reported_not_normalized_and_every_other_frame_is_one_event(recorded, outcomes):
    for record, outcome in zip(recorded, outcomes, strict=True):
        if "@kline_" in _raw(record)["stream"]:
            assert isinstance(outcome, NotNormalized), record.payload
            assert (outcome.channel, outcome.reason) == ("kline_1m", "unhandled")
        else:
            assert isinstance(outcome, list) and len(outcome) == 1, record.payload
    assert sum(isinstance(outcome, NotNormalized) for outcome in outcomes) == 2


def _recorded_deltas(parsed: list[list[MarketEvent]]) -> dict[str, list[BookDelta]]:
    deltas: dict[str, list[BookDelta]] = defaultdict(list)
    for events in parsed:
        for event in events:
            if isinstance(event, BookDelta):
                deltas[event.symbol].append(event)
    return deltas


def _snapshot(symbol: str, seq: int) -> BookSnapshot:
    return BookSnapshot("binance", symbol, (), (), seq, 0, 0)


def test_the_recorded_update_ids_chain_without_a_gap(recorded):
    """What the next tests rely on, read independently: each depthUpdate starts right after the previous one."""
    last: dict[str, int] = {}
    for record in recorded:
        data = _raw(record)["data"]
        if data.get("e") == "depthUpdate":
            if data["s"] in last:
                assert data["U"] == last[data["s"]] + 1
            last[data["s"]] = data["u"]
    assert len(last) == 4


def test_whole_recorded_book_stream_syncs_after_a_snapshot_taken_mid_buffer(parsed):
    """Binance's procedure: updates up to lastUpdateId are stale; the first applied one straddles it."""
    for symbol, deltas in _recorded_deltas(parsed).items():
        sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
        assert [sync.on_delta(delta) for delta in deltas[:2]] == [BookVerdict.WAITING] * 2
        snapshot_seq = deltas[1].last_seq  # the REST snapshot was taken after the first two buffered updates
        assert snapshot_seq is not None
        assert sync.on_snapshot(_snapshot(symbol, snapshot_seq)) is BookVerdict.OK
        verdicts = [sync.on_delta(delta) for delta in deltas]
        assert verdicts == [BookVerdict.STALE] * 2 + [BookVerdict.OK] * (len(deltas) - 2), symbol
        assert sync.last_seq == deltas[-1].last_seq


def test_a_snapshot_inside_an_updates_range_is_continued_by_that_update(parsed):
    first = _recorded_deltas(parsed)["NKNUSDT"][0]  # U=499869750, u=499869752
    assert first.first_seq is not None and first.last_seq is not None and first.first_seq < first.last_seq
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    sync.on_snapshot(_snapshot("NKNUSDT", first.first_seq))
    assert sync.on_delta(first) is BookVerdict.OK


def test_a_skipped_recorded_update_is_a_gap(parsed):
    deltas = _recorded_deltas(parsed)["NKNUSDT"]
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    assert deltas[0].first_seq is not None
    sync.on_snapshot(_snapshot("NKNUSDT", deltas[0].first_seq - 1))
    assert [sync.on_delta(delta) for delta in deltas[:10]] == [BookVerdict.OK] * 10
    assert sync.on_delta(deltas[11]) is BookVerdict.GAP  # deltas[10] lost


def test_binance_spot_sends_no_checksum():
    assert SPEC.book_checksum is None and SPEC.book_checksum_depth == 0


def test_instruments_from_the_recorded_exchange_info(exchange_info, registry):
    listed = exchange_info["symbols"]
    instruments = parse_instruments(json.dumps(exchange_info).encode())
    assert len(instruments) == len(listed) == 1695
    assert {i.native for i in instruments} == {s["symbol"] for s in listed}
    assert sum(1 for s in listed if s["status"] != "TRADING") == 433  # halted symbols keep their names
    assert registry.by_native("binance", "blzeth") == Instrument("binance", "BLZETH", "BLZ", "ETH")
    assert [registry.normalize("binance", n) for n in ("nknusdt", "LRCBTC", "runeeur")] == [
        "NKNUSDT",
        "LRCBTC",
        "RUNEEUR",
    ]


# --- frames in the documented shape ----------------------------------------------------------------------------

TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":3290150427,'
    '"p":"16542.01000000","q":"0.00121000","T":1672515782134,"m":true,"M":true}}'
)


def test_trade_stream_frame():
    assert parse(TRADE, EMPTY) == [
        Trade("binance", "BTCUSDT", "3290150427", D("16542.01"), D("0.00121"), "sell", 1672515782134_000_000, 7)
    ]


def test_numbers_sent_as_json_numbers_keep_their_digits():
    frame = TRADE.replace('"16542.01000000"', "16542.010000000000000001")
    (trade,) = parse(frame, EMPTY)
    assert isinstance(trade, Trade) and trade.price == D("16542.010000000000000001")


def test_a_book_ticker_with_an_event_time_uses_it():
    frame = (
        '{"stream":"btcusdt@bookTicker","data":{"u":5,"E":1672515782136,"s":"BTCUSDT","b":"1","B":"2","a":"3","A":"4"}}'
    )
    (quote,) = parse(frame, EMPTY)
    assert isinstance(quote, Quote) and quote.ts == 1672515782136_000_000 and quote.recv_ts == 7


def test_the_registry_names_symbols_and_a_listed_alias_is_folded():
    registry = InstrumentRegistry([Instrument("binance", "BTCUSDT", "XBT", "USDT")])
    (trade,) = parse(TRADE, ParseContext(registry, 1))
    assert trade.symbol == "BTCUSDT"
    registry.add(Instrument("binance", "ABCUSDT", "ABC", "USDT"))
    renamed = TRADE.replace('"s":"BTCUSDT"', '"s":"abcusdt"')
    assert parse(renamed, ParseContext(registry, 1))[0].symbol == "ABCUSDT"


@pytest.mark.parametrize("frame", ['{"result":null,"id":1}', '{"result":["btcusdt@trade"],"id":"x"}'])
def test_request_replies_are_protocol_chatter_and_parse_to_nothing(frame):
    assert parse(frame, EMPTY) == []
    assert {"reply"} == PROTOCOL_CHATTER and SPEC.protocol_chatter == PROTOCOL_CHATTER


@pytest.mark.parametrize(
    ("frame", "channel"),
    [
        ('{"stream":"btcusdt@kline_1m","data":{}}', "kline_1m"),
        ('{"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":1,"bids":[],"asks":[]}}', "depth20@100ms"),
        ('{"stream":"!miniTicker@arr","data":[]}', "arr"),
    ],
)
def test_streams_not_normalized_are_reported_with_their_channel(frame, channel):
    assert_not_normalized(parse, frame, EMPTY, channel, "unhandled")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"error":{"code":2,"msg":"Invalid request: invalid stream name"},"id":3}', "invalid stream name"),
        ("not json", "malformed"),
        ("{}", "neither a stream event nor a reply"),
        ('{"stream":"btcusdt@trade"}', "without data"),
        ('{"stream":"trade","data":{}}', "no '@<channel>'"),
        (TRADE.replace('"m":true', '"m":"yes"'), "malformed"),
        (TRADE.replace('"p":"16542.01000000",', ""), "malformed"),
        (TRADE.replace('"16542.01000000"', '"NaN"'), "positive"),
        (TRADE.replace('"0.00121000"', '"-1"'), "positive"),
        (TRADE.replace('"BTCUSDT"', '"BTC USDT"'), "not a symbol name"),
        ('{"stream":"x@depth@100ms","data":{"E":1,"s":"X","U":5,"u":4,"b":[],"a":[]}}', "U=5 is after last u=4"),
        ('{"stream":"x@depth@100ms","data":{"E":1,"s":"X","U":1,"u":1,"b":[["0","1"]],"a":[]}}', "non-positive"),
        ('{"stream":"x@bookTicker","data":{"u":1,"s":"X","b":"-1","B":"1","a":"1","A":"1"}}', "not negative"),
    ],
)
def test_malformed_frames_raise_parse_error_naming_the_problem(frame, reason):
    with pytest.raises(ParseError, match=reason):
        parse(frame, EMPTY)


def test_subscribe_and_unsubscribe_frames():
    assert SPEC.subscribe(["BTCUSDT", "ethbtc"], [Channel.TRADES, Channel.BOOK]) == [
        '{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@depth@100ms","ethbtc@trade","ethbtc@depth@100ms"],'
        '"id":1}'
    ]
    assert SPEC.unsubscribe(["BTCUSDT"], [Channel.QUOTES]) == [
        '{"method":"UNSUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}'
    ]
    assert SPEC.subscribe([], ALL_CHANNELS) == []


def test_spec_declares_binances_limits_and_book_resync():
    assert SPEC.ws_url == "wss://stream.binance.com:9443/stream" and SPEC.rest_url == "https://api.binance.com"
    assert SPEC.max_symbols_per_connection == 341  # 1024 streams, three per symbol
    assert SPEC.contiguous_trade_ids and SPEC.keepalive_frame is None
    assert SPEC.book_resync == "rest" and SPEC.book_snapshot_path is book_snapshot_path
    assert book_snapshot_path("btcusdt") == "/api/v3/depth?symbol=BTCUSDT&limit=1000"


def test_rest_depth_snapshot():
    body = b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}'
    assert parse_book_snapshot(body, "BNBBTC", 99) == BookSnapshot(
        "binance", "BNBBTC", ((D("4"), D("431")),), ((D("4.000002"), D("12")),), 1027024, 99, 99
    )
    with pytest.raises(ParseError, match="depth snapshot"):
        parse_book_snapshot(b'{"code":-1121,"msg":"Invalid symbol."}', "X", 1)


def _delta(first: int, last: int) -> BookDelta:
    return BookDelta("binance", "X", (), (), first, last, 0, 0)


@pytest.mark.parametrize(
    ("last_seq", "first", "last", "continues"),
    [
        (100, 101, 101, True),  # the next update
        (100, 101, 105, True),
        (100, 99, 103, True),  # straddles the snapshot's lastUpdateId
        (100, 102, 105, False),  # 101 is missing
        (100, 90, 100, False),  # entirely old (BookSync calls these STALE first)
    ],
)
def test_sequence_rule(last_seq, first, last, continues):
    assert book_sequence(last_seq, _delta(first, last)) is continues


def test_native_symbols():
    registry = InstrumentRegistry([Instrument("binance", "BTCUSDT", "BTC", "USDT")])
    assert SPEC.native_symbol("BTCUSDT", registry) == "BTCUSDT"
    assert SPEC.native_symbol("ethbtc", InstrumentRegistry()) == "ETHBTC"
    with pytest.raises(SymbolError):
        SPEC.native_symbol("BTCUSD-PERP", InstrumentRegistry())


# --- simulator round trip ---------------------------------------------------------------------------------------

BTC = SimInstrument("BTC", "USDT", D("0.01"), D("0.00001"))
MS = 1_000_000


def test_rendered_trades_parse_back_to_the_simulated_trades():
    trades = [
        SimTrade(41, D("27000.01"), D("0.00001"), "buy", 1700000000123 * MS),
        SimTrade(42, D("26999.99"), D("1.5"), "sell", 1700000000124 * MS + 999_999),
        SimTrade(43, D("0.00000001"), D("100000000"), "buy", 1700000000125 * MS),
    ]
    frames = DIALECT.render_trades("BTCUSDT", trades)
    assert len(frames) == 3  # one trade per frame
    assert "E-" not in "".join(frames)  # plain digits as Binance writes them
    events = [event for frame in frames for event in parse(frame, EMPTY)]
    assert events == [
        Trade("binance", "BTCUSDT", str(t.trade_id), t.price, t.qty, t.side, t.ts_ns // MS * MS, 7) for t in trades
    ]


def test_rendered_quote_and_delta_parse_back():
    quote = SimQuote(D("100.5"), D("2"), D("100.6"), D("3.25"), 77, 1700000000000 * MS)
    assert parse(DIALECT.render_quote("BTCUSDT", quote), EMPTY) == [
        Quote("binance", "BTCUSDT", D("100.5"), D("2"), D("100.6"), D("3.25"), 7, 7, 77)
    ]
    book = SimBook(((D("100.5"), D("2")),), ((D("100.6"), D("3.25")),), 80, 1700000000001 * MS)
    delta = SimBookDelta(((D("100.5"), D("0")),), ((D("100.7"), D("1")),), 78, 80, 77, 1700000000001 * MS, book)
    assert parse(DIALECT.render_book_delta("BTCUSDT", delta), EMPTY) == [
        BookDelta("binance", "BTCUSDT", delta.bids, delta.asks, 78, 80, 1700000000001 * MS, 7)
    ]


def _book(seq: int) -> SimBook:
    bids = tuple((D(100) - D(i) / 100, D(i + 1)) for i in range(1200))
    asks = tuple((D(101) + D(i) / 100, D(i + 1)) for i in range(1200))
    return SimBook(bids, asks, seq, 0)


def test_rest_book_and_deltas_sync_like_the_real_exchange():
    book = _book(500)
    assert DIALECT.rest_book_path == "/api/v3/depth" and DIALECT.render_rest_book is not None
    snapshot = parse_book_snapshot(DIALECT.render_rest_book("BTCUSDT", book), "BTCUSDT", 5)
    assert snapshot.seq == 500 and snapshot.bids == book.bids[:1000] and snapshot.asks == book.asks[:1000]
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    assert sync.on_snapshot(snapshot) is BookVerdict.OK
    changes = [
        SimBookDelta(((D(100), D(0)),), (), 499, 501, 498, 0, book),  # buffered across the snapshot
        SimBookDelta((), ((D("100.99"), D("0.5")),), 502, 502, 501, 0, book),
        SimBookDelta((), ((D(101), D(0)),), 504, 506, 502, 0, book),  # a gap fault: 503 skipped
    ]
    deltas = [parse(DIALECT.render_book_delta("BTCUSDT", c), EMPTY)[0] for c in changes]
    assert [sync.on_delta(d) for d in deltas if isinstance(d, BookDelta)] == [
        BookVerdict.OK,
        BookVerdict.OK,
        BookVerdict.GAP,
    ]
    assert sync.book.best_bid == (D("99.99"), D(2)) and sync.book.best_ask == (D("100.99"), D("0.5"))


def test_rendered_instruments_parse_back():
    body = DIALECT.render_instruments([BTC, SimInstrument("ETH", "BTC", D("0.000001"), D("0.0001"))])
    assert parse_instruments(body) == [
        Instrument("binance", "BTCUSDT", "BTC", "USDT"),
        Instrument("binance", "ETHBTC", "ETH", "BTC"),
    ]
    assert DIALECT.native(BTC) == "BTCUSDT" and DIALECT.instruments_path == SPEC.instruments_path


@pytest.mark.parametrize("channels", [ALL_CHANNELS, (Channel.TRADES,), (Channel.QUOTES, Channel.BOOK)])
def test_subscribe_frames_are_understood_by_the_simulator(channels):
    natives = ["BTCUSDT", "ETHBTC"]
    for build, action in ((SPEC.subscribe, "subscribe"), (SPEC.unsubscribe, "unsubscribe")):
        (frame,) = build(natives, channels)
        request = DIALECT.parse_client_frame(frame)
        assert request.action == action
        assert set(request.subscriptions) == {(c, n) for n in natives for c in channels}
        assert request.replies == ('{"result":null,"id":1}',)
        assert parse(request.replies[0], EMPTY) == []


def test_combined_stream_query_subscriptions():
    assert DIALECT.subscriptions_from_query is not None
    query = {"streams": "btcusdt@trade/btcusdt@depth@100ms/ethbtc@bookTicker/ethbtc@kline_1m/bogus"}
    assert DIALECT.subscriptions_from_query(query) == (
        (Channel.TRADES, "BTCUSDT"),
        (Channel.BOOK, "BTCUSDT"),
        (Channel.QUOTES, "ETHBTC"),
    )


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("hello", 3),
        ('{"method":"SUBSCRIBE","params":["btcusdt"],"id":4}', 2),
        ('{"method":"PING","id":4}', 2),
        ('{"params":[]}', 2),
    ],
)
def test_invalid_client_frames_get_binances_error_reply(frame, code):
    request = DIALECT.parse_client_frame(frame)
    assert request.action == "invalid"
    (reply,) = request.replies
    assert json.loads(reply)["error"]["code"] == code and "id" in json.loads(reply)
    with pytest.raises(ParseError, match="binance error reply"):
        parse(reply, EMPTY)


def test_list_subscriptions_is_answered_not_acted_on():
    request = DIALECT.parse_client_frame('{"method":"LIST_SUBSCRIPTIONS","id":3}')
    assert request.action == "ignore" and request.replies == ('{"result":[],"id":3}',)


# --- fuzzing ----------------------------------------------------------------------------------------------------

FIELDS = ["stream", "data", "e", "E", "s", "t", "a", "p", "q", "T", "m", "u", "U", "b", "B", "A", "id", "error"]
json_values = json_strategy(st.sampled_from(FIELDS) | st.text(max_size=4), text_size=8, dict_size=5, max_leaves=15)
SAMPLE_FRAMES = [
    TRADE,
    '{"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"NKNUSDT","a":1,"p":"0.35","q":"58","f":1,"l":1,'
    '"T":1,"m":false,"M":true}}',
    '{"stream":"nknusdt@bookTicker","data":{"u":1,"s":"NKNUSDT","b":"0.35","B":"672","a":"0.36","A":"3199"}}',
    '{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":1,"u":2,'
    '"b":[["0.35","1"]],"a":[["0.36","0"]]}}',
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(frame):
    parsed_or_refused(parse, frame, EMPTY)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises_anything_but_parse_error(value):
    parsed_or_refused(parse, json.dumps(value), EMPTY)
    parsed_or_refused(parse, json.dumps({"stream": "btcusdt@trade", "data": value}), EMPTY)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLE_FRAMES), st.data())
def test_mutated_real_frames_never_raise_anything_but_parse_error(frame, data):
    value = json.loads(frame)
    target = value["data"] if data.draw(st.booleans()) else value
    mutate_field(target, data, json_values)
    parsed_or_refused(parse, json.dumps(value), EMPTY)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | json_values.map(json.dumps))
def test_the_simulator_reads_any_client_frame(frame):
    assert_reads_client_frame(DIALECT, frame, ("subscribe", "unsubscribe", "ignore", "invalid"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_rest_bodies_parse_or_raise_parse_error(body):
    for parse_body, kind in (
        (lambda b: [parse_book_snapshot(b, "X", 1)], BookSnapshot),
        (parse_instruments, Instrument),
    ):
        try:
            result = parse_body(body)
        except ParseError:
            continue
        assert all(isinstance(item, kind) for item in result)
