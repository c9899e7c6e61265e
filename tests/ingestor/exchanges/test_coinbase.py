"""Coinbase Exchange: the parser against the real 2021 recording, times, the product listing, the simulator
dialect round trip, and hostile input."""

from __future__ import annotations

import json
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from helpers import (
    assert_not_normalized,
    assert_sane_outcome,
    events_or_not_normalized,
    json_strategy,
    mutate,
    received_json,
    recording,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import NotNormalized, ParseError, SymbolError
from market_ingestor.ingestor.book import BookSync, BookVerdict
from market_ingestor.ingestor.capture import SessionRecord, read_session, received_frames, rest_bodies
from market_ingestor.ingestor.exchanges.base import Channel, ParseContext
from market_ingestor.ingestor.exchanges.coinbase import PROTOCOL_CHATTER, SPEC, iso_ns
from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, MarketEvent, Quote, Trade
from market_ingestor.simulator.coinbase import DIALECT
from market_ingestor.simulator.dialect import SimBook, SimBookDelta, SimInstrument, SimQuote, SimTrade

WS_RECORDING = "COINBASE.ws.28.0"
REST_RECORDING = "COINBASE.0"
CTX = ParseContext(InstrumentRegistry(), 7)
TAKER = {"buy": "sell", "sell": "buy"}  # Coinbase reports the maker's side


@pytest.fixture(scope="module")
def records() -> list[SessionRecord]:
    return list(received_frames(recording(WS_RECORDING)))


@pytest.fixture(scope="module")
def events(records: list[SessionRecord]) -> list[MarketEvent]:
    """Every recorded frame's events; the frames not turned into events are checked apart."""
    outcomes = (events_or_not_normalized(SPEC.parse, record.payload, CTX) for record in records)
    return [event for outcome in outcomes if isinstance(outcome, list) for event in outcome]


# --- recorded session ---------------------------------------------------------------------------------------


def test_recorded_matches_are_taker_side_trades_matching_an_independent_reading(events: list[MarketEvent]) -> None:
    expected = [
        (
            m["product_id"].replace("-", ""),
            str(m["trade_id"]),
            Decimal(m["price"]),
            Decimal(m["size"]),
            TAKER[m["side"]],
        )
        for m in received_json(WS_RECORDING)
        if m["type"] == "match"
    ]
    trades = [e for e in events if isinstance(e, Trade)]
    assert [(t.symbol, t.trade_id, t.price, t.qty, t.side) for t in trades] == expected

    counts = Counter(t.symbol for t in trades)
    volumes = {symbol: sum((t.qty for t in trades if t.symbol == symbol), Decimal(0)) for symbol in counts}
    assert counts == {"SKLUSD": 52, "DASHBTC": 15, "SKLBTC": 8, "NMREUR": 8, "BANDBTC": 8, "BANDGBP": 4,
                      "SKLGBP": 1, "NUGBP": 1}  # fmt: skip
    assert volumes == {
        "SKLUSD": Decimal("46731.3"), "DASHBTC": Decimal("15.755"), "SKLBTC": Decimal("6763.0"),
        "NMREUR": Decimal("4.761"), "BANDBTC": Decimal("210.6"), "BANDGBP": Decimal("36.0"),
        "SKLGBP": Decimal("335"), "NUGBP": Decimal("805.131"),
    }  # fmt: skip


def test_first_recorded_match_in_full(records: list[SessionRecord]) -> None:
    record = next(r for r in records if '"type":"match"' in r.payload)
    (trade,) = SPEC.parse(record.payload, ParseContext(InstrumentRegistry(), record.recv_ts_ns))
    # "side":"sell" is the resting order: the taker bought. 16:43:37.089723 UTC on 2021-04-17.
    assert trade == Trade("coinbase", "SKLBTC", "280232", Decimal("0.00001305"), Decimal("985"), "buy",
                          1618677817_089723000, record.recv_ts_ns)  # fmt: skip
    assert str(trade.price) == "0.00001305"


def test_trade_ids_are_contiguous_and_continue_from_last_match(events: list[MarketEvent]) -> None:
    last_match = {m["product_id"].replace("-", ""): m["trade_id"] for m in received_json(WS_RECORDING)
                  if m["type"] == "last_match"}  # fmt: skip
    assert len(last_match) == 10
    assert SPEC.contiguous_trade_ids
    previous = dict(last_match)
    for trade in (e for e in events if isinstance(e, Trade)):
        assert int(trade.trade_id) == previous[trade.symbol] + 1
        previous[trade.symbol] = int(trade.trade_id)


def test_recorded_last_match_and_sizeless_tickers_are_reported_and_the_ack_is_chatter(
    records: list[SessionRecord],
) -> None:
    kinds = Counter(json.loads(r.payload)["type"] for r in records)
    assert kinds == {"l2update": 9719, "ticker": 107, "match": 97, "snapshot": 10, "last_match": 10,
                     "subscriptions": 3}  # fmt: skip
    reported: Counter[tuple[str, str]] = Counter()
    for record in records:
        outcome = events_or_not_normalized(SPEC.parse, record.payload, CTX)
        if isinstance(outcome, NotNormalized):
            reported[outcome.channel, outcome.reason] += 1
        elif json.loads(record.payload)["type"] == "subscriptions":
            assert outcome == []
        else:
            assert outcome, record.payload
    # 2021 tickers carry no sizes: no quote is invented, and none is dropped without a word
    assert reported == {("ticker", "incomplete"): 107, ("last_match", "unhandled"): 10}


def test_tickers_with_sizes_give_quotes() -> None:
    frame = {"type": "ticker", "sequence": 93525999403, "product_id": "BTC-USD", "price": "99728.83",
             "open_24h": "100966.53", "volume_24h": "9756.916611", "low_24h": "99012.73", "high_24h": "102104.12",
             "volume_30d": "539862.627144", "best_bid": "99718.01", "best_bid_size": "0.02453500",
             "best_ask": "99728.83", "best_ask_size": "0.06298200", "side": "buy",
             "time": "2024-12-07T18:00:00.542551Z", "trade_id": 734680334, "last_size": "0.000261"}  # fmt: skip
    (quote,) = SPEC.parse(json.dumps(frame), CTX)
    assert quote == Quote("coinbase", "BTCUSD", Decimal("99718.01"), Decimal("0.02453500"), Decimal("99728.83"),
                          Decimal("0.06298200"), 1733594400_542551000, 7, 93525999403)  # fmt: skip
    assert isinstance(quote, Quote) and str(quote.bid_qty) == "0.02453500"
    del frame["time"]
    (quote,) = SPEC.parse(json.dumps(frame), CTX)
    assert quote.ts == 7  # no exchange time: the receipt time


def test_recorded_level2_builds_uncrossed_books_equal_to_an_independent_replay(events: list[MarketEvent]) -> None:
    books = [e for e in events if isinstance(e, BookSnapshot | BookDelta)]
    assert Counter(type(e).__name__ for e in books) == {"BookSnapshot": 10, "BookDelta": 9719}
    syncs: dict[str, BookSync] = {}
    verdicts = Counter()
    for event in books:
        sync = syncs.setdefault(event.symbol, BookSync(SPEC.book_sequence, SPEC.book_checksum))
        verdicts[sync.on_snapshot(event) if isinstance(event, BookSnapshot) else sync.on_delta(event)] += 1
    assert verdicts == {BookVerdict.OK: 9729}

    replay: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
    for m in received_json(WS_RECORDING):
        if m["type"] == "snapshot":
            replay[m["product_id"]] = {
                "buy": {Decimal(p): Decimal(q) for p, q in m["bids"]},
                "sell": {Decimal(p): Decimal(q) for p, q in m["asks"]},
            }
        elif m["type"] == "l2update":
            for side, price, size in m["changes"]:
                levels = replay[m["product_id"]][side]
                levels.pop(Decimal(price), None) if Decimal(size) == 0 else levels.update(
                    {Decimal(price): Decimal(size)}
                )
    for product, sides in replay.items():
        book = syncs[product.replace("-", "")].book
        bids, asks = book.top(10_000)
        assert bids == sorted(sides["buy"].items(), reverse=True)
        assert asks == sorted(sides["sell"].items())
        assert bids[0][0] < asks[0][0]  # buy changes went to bids, sell changes to asks

    snapshot = next(e for e in books if isinstance(e, BookSnapshot) and e.symbol == "DASHBTC")
    assert (len(snapshot.bids), len(snapshot.asks), snapshot.seq, snapshot.checksum) == (432, 548, None, None)
    assert snapshot.bids[0] == (Decimal("0.00618955"), Decimal("2.57200000"))
    assert snapshot.asks[0] == (Decimal("0.00620125"), Decimal("1.62300000"))
    first_delta = next(e for e in books if isinstance(e, BookDelta))
    assert first_delta == BookDelta("coinbase", "SKLBTC", (), ((Decimal("0.00001306"), Decimal("660.5")),), None,
                                    None, 1618677817_075687000, 7)  # fmt: skip


def test_iso_times_convert_exactly() -> None:
    assert iso_ns("2021-04-17T16:43:37.089723Z") == 1618677817_089723000
    assert iso_ns("1970-01-01T00:00:00Z") == 0
    assert iso_ns("2024-02-29T23:59:59.999999999Z") == 1709251199_999999999
    assert iso_ns("2021-04-17T16:43:37.1Z") == 1618677817_100000000
    assert iso_ns("2021-04-17T16:43:37.089723+00:00") == iso_ns("2021-04-17T16:43:37.089723") == 1618677817_089723000
    for bad in ("2021-04-17T16:43:60.000000Z", "2021-02-30T00:00:00.000000Z", "2021-04-17T24:00:00Z",
                "2021-04-17 16:43:37.000000Z", "2021-04-17T16:43:37.Z", "2021-04-17T16:43:37.1234567890Z",
                "2021-04-17T16:43:3\u0663.000000Z", "2021-04-17T16:43:01.00000_Z", "", "x"):  # fmt: skip
        with pytest.raises(ParseError):
            iso_ns(bad)


def test_protocol_chatter_parses_to_nothing_and_unknown_types_are_reported() -> None:
    assert SPEC.protocol_chatter == PROTOCOL_CHATTER == {"subscriptions", "heartbeat", "status"}
    assert (
        SPEC.parse('{"type":"heartbeat","sequence":1,"last_trade_id":2,"product_id":"BTC-USD","time":"x"}', CTX) == []
    )
    assert SPEC.parse('{"type":"status","products":[],"currencies":[]}', CTX) == []
    assert_not_normalized(SPEC.parse, '{"type":"surprise"}', CTX, "surprise", "unhandled")
    full_channel_open = (
        '{"type":"open","time":"2021-04-17T16:43:37.089723Z","product_id":"BTC-USD","sequence":10,'
        '"order_id":"d50ec984-77a8-460a-b958-66f114b0de9b","price":"200.2","remaining_size":"1.00","side":"sell"}'
    )
    assert_not_normalized(SPEC.parse, full_channel_open, CTX, "open", "unhandled")
    sizeless_ticker = (
        '{"type":"ticker","sequence":1,"product_id":"BTC-USD","price":"1","best_bid":"1","best_ask":"2",'
        '"time":"2021-04-17T16:43:37.089723Z"}'
    )
    assert_not_normalized(SPEC.parse, sizeless_ticker, CTX, "ticker", "incomplete")


def test_errors_are_parse_errors() -> None:
    with pytest.raises(ParseError, match="is not a valid product"):
        SPEC.parse('{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}', CTX)
    with pytest.raises(ParseError, match="match"):
        SPEC.parse('{"type":"match","trade_id":1,"side":"buy","size":"1","price":"1","product_id":"BTC-USD"}', CTX)
    for bad in ("", "[]", "{}", "pong", '{"type":5}'):
        with pytest.raises(ParseError):
            SPEC.parse(bad, CTX)


# --- instruments, symbols, subscriptions --------------------------------------------------------------------


def test_product_listing_and_symbols(records: list[SessionRecord], events: list[MarketEvent]) -> None:
    (body,) = [r.payload.encode() for r in rest_bodies(recording(REST_RECORDING))]
    assert len(json.loads(body)) == 162
    instruments = SPEC.parse_instruments(body)
    assert len(instruments) == 162 and all(i.kind == "spot" for i in instruments)
    registry = InstrumentRegistry(instruments)
    assert registry.by_native("coinbase", "BTC-GBP").symbol == "BTCGBP"
    assert SPEC.native_symbol("SKLUSD", registry) == "SKL-USD"
    with pytest.raises(SymbolError):
        SPEC.native_symbol("SKLUSD", InstrumentRegistry())
    outcomes = (events_or_not_normalized(SPEC.parse, r.payload, ParseContext(registry, 7)) for r in records)
    with_listing = [e for outcome in outcomes if isinstance(outcome, list) for e in outcome]
    assert with_listing == events
    delisted = b'[{"id":"A-B","base_currency":"A","quote_currency":"B","status":"delisted"}]'
    assert SPEC.parse_instruments(delisted) == []
    with pytest.raises(ParseError):
        SPEC.parse_instruments(b'{"message":"Not Found"}')


def test_subscribe_frames() -> None:
    assert SPEC.subscribe(["BTC-USD", "ETH-USD"], list(Channel)) == [
        '{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channels":["matches","ticker","level2_batch"]}'
    ]
    assert SPEC.unsubscribe(["BTC-USD"], [Channel.TRADES]) == [
        '{"type":"unsubscribe","product_ids":["BTC-USD"],"channels":["matches"]}'
    ]
    assert SPEC.subscribe([], list(Channel)) == []
    assert (SPEC.ws_url, SPEC.rest_url, SPEC.instruments_path) == (
        "wss://ws-feed.exchange.coinbase.com", "https://api.exchange.coinbase.com", "/products")  # fmt: skip
    assert (SPEC.book_sequence, SPEC.book_checksum, SPEC.book_resync, SPEC.keepalive_frame) == (
        None, None, "resubscribe", None)  # fmt: skip


# --- simulator dialect --------------------------------------------------------------------------------------

INSTRUMENT = SimInstrument("BTC", "USD", Decimal("0.01"), Decimal("0.00000001"))


def test_simulated_trades_and_quotes_parse_back_to_the_same_values() -> None:
    native = DIALECT.native(INSTRUMENT)
    trades = [
        SimTrade(41, Decimal("27123.45"), Decimal("0.00000001"), "buy", 1_700_000_000_123_456_000),
        SimTrade(42, Decimal("27123.44"), Decimal("3.5"), "sell", 1_700_000_059_999_999_000),
    ]
    frames = DIALECT.render_trades(native, trades)
    assert json.loads(frames[0])["side"] == "sell"  # the maker's side, as Coinbase sends it
    assert [e for f in frames for e in SPEC.parse(f, CTX)] == [
        Trade("coinbase", "BTCUSD", str(t.trade_id), t.price, t.qty, t.side, t.ts_ns, 7) for t in trades
    ]
    nanos = SimTrade(43, Decimal(1), Decimal(1), "buy", 1_700_000_000_123_456_789)
    (trade,) = SPEC.parse(DIALECT.render_trades(native, [nanos])[0], CTX)
    assert trade.ts == 1_700_000_000_123_456_000  # Coinbase's precision is the microsecond

    quote = SimQuote(
        Decimal("27123.44"), Decimal("0.5"), Decimal("27123.45"), Decimal("1.25"), 9001, 1_700_000_000 * 10**9
    )
    assert SPEC.parse(DIALECT.render_quote(native, quote), CTX) == [
        Quote(
            "coinbase", "BTCUSD", quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty, quote.ts_ns, 7, 9001
        )
    ]


def test_simulated_level2_rebuilds_the_simulated_book() -> None:
    rng = random.Random(5)
    bids = {Decimal(27000) - i * Decimal("0.01"): rng.randint(1, 10**8) * Decimal("0.00000001") for i in range(40)}
    asks = {Decimal("27000.01") + i * Decimal("0.01"): rng.randint(1, 10**8) * Decimal("0.00000001") for i in range(40)}
    native = DIALECT.native(INSTRUMENT)

    def book(seq: int) -> SimBook:
        return SimBook(
            tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items())), seq, 1_700_000_000 * 10**9
        )

    assert DIALECT.render_book_snapshot is not None
    (snapshot,) = SPEC.parse(DIALECT.render_book_snapshot(native, book(1)), CTX)
    assert isinstance(snapshot, BookSnapshot) and (snapshot.bids, snapshot.asks) == (book(1).bids, book(1).asks)
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum)
    assert sync.on_snapshot(snapshot) is BookVerdict.OK
    for seq in range(2, 150):
        side = bids if rng.random() < 0.5 else asks
        price = rng.choice(sorted(side))
        if rng.random() < 0.4:
            del side[price]
            change = (price, Decimal(0))
        else:
            side[price] = change_qty = rng.randint(1, 10**8) * Decimal("0.00000001")
            change = (price, change_qty)
        after = book(seq)
        delta = SimBookDelta((change,) if side is bids else (), (change,) if side is asks else (), seq, seq, seq - 1,
                             1_700_000_000 * 10**9 + seq * 1000, after)  # fmt: skip
        (event,) = SPEC.parse(DIALECT.render_book_delta(native, delta), CTX)
        assert isinstance(event, BookDelta)
        assert (event.bids, event.asks, event.ts) == (delta.bids, delta.asks, delta.ts_ns)
        assert sync.on_delta(event) is BookVerdict.OK
        assert sync.book.top(1000) == (list(after.bids), list(after.asks))


def test_simulated_listing_and_client_frames() -> None:
    instruments = [INSTRUMENT, SimInstrument("ETH", "BTC", Decimal("0.00001"), Decimal("0.001"))]
    registry = InstrumentRegistry(SPEC.parse_instruments(DIALECT.render_instruments(instruments)))
    assert registry.symbols("coinbase") == ["BTCUSD", "ETHBTC"]
    assert SPEC.native_symbol("ETHBTC", registry) == "ETH-BTC"

    natives = ["BTC-USD", "ETH-BTC"]
    (frame,) = SPEC.subscribe(natives, list(Channel))
    request = DIALECT.parse_client_frame(frame)
    assert request.action == "subscribe"
    assert set(request.subscriptions) == {(channel, native) for channel in Channel for native in natives}
    (reply,) = request.replies
    assert SPEC.parse(reply, CTX) == []
    assert json.loads(reply)["channels"][0] == {"name": "matches", "product_ids": natives}
    (frame,) = SPEC.unsubscribe(natives[:1], [Channel.QUOTES])
    request = DIALECT.parse_client_frame(frame)
    assert (request.action, request.subscriptions) == ("unsubscribe", ((Channel.QUOTES, "BTC-USD"),))
    by_name = DIALECT.parse_client_frame('{"type":"subscribe","channels":[{"name":"level2","product_ids":["A-B"]}]}')
    assert by_name.subscriptions == ((Channel.BOOK, "A-B"),)

    for garbage in ("ping", "{}", '{"type":"subscribe","product_ids":["A-B"],"channels":["nope"]}',
                    '{"type":"subscribe","channels":["matches"]}'):  # fmt: skip
        refused = DIALECT.parse_client_frame(garbage)
        assert refused.action == "invalid"
        with pytest.raises(ParseError, match="coinbase error"):
            SPEC.parse(refused.replies[0], CTX)


def test_recorded_client_frames_are_understood_by_the_dialect() -> None:
    sent = [r for r in read_session(recording(WS_RECORDING)) if r.kind == "sent"]
    requests = [DIALECT.parse_client_frame(r.payload) for r in sent]
    assert [r.action for r in requests] == ["subscribe"] * 3
    assert {channel for r in requests for channel, _ in r.subscriptions} == set(Channel)
    assert len({native for r in requests for _, native in r.subscriptions}) == 10


# --- hostile input ------------------------------------------------------------------------------------------

_json_values = json_strategy(st.text(max_size=8), text_size=12, dict_size=4, max_leaves=16)
_FIELDS = ["product_id", "trade_id", "side", "size", "price", "time", "best_bid", "best_ask", "best_bid_size",
           "best_ask_size", "sequence", "bids", "asks", "changes", "message", "reason"]  # fmt: skip
_shaped = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(["match", "ticker", "snapshot", "l2update", "error", "last_match", "heartbeat", "x"]),
    st.dictionaries(st.sampled_from(_FIELDS), _json_values, max_size=10),
)
_MUTATIONS = _json_values | st.sampled_from(
    ["", "NaN", "-1", "1e400", "Infinity", "0", "buy", "match", "2021-02-30T00:00:00Z"]
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(frame: bytes) -> None:
    assert_sane_outcome(SPEC.parse, frame, CTX)


@settings(max_examples=300, deadline=None)
@given(_json_values | _shaped)
def test_arbitrary_json_never_raises_anything_but_parse_error(value: Any) -> None:
    assert_sane_outcome(SPEC.parse, json.dumps(value), CTX)


@pytest.fixture(scope="module")
def sample_frames(records: list[SessionRecord]) -> list[Any]:
    """One real frame of each type (snapshots cut to 5 levels a side), plus today's ticker and an error."""
    kinds: dict[str, Any] = {}
    for record in records:
        frame = json.loads(record.payload)
        kinds.setdefault(frame["type"], frame)
    kinds["snapshot"] = {
        **kinds["snapshot"],
        "bids": kinds["snapshot"]["bids"][:5],
        "asks": kinds["snapshot"]["asks"][:5],
    }
    kinds["ticker_sized"] = {**kinds["ticker"], "best_bid_size": "1.5", "best_ask_size": "2"}
    kinds["error"] = {"type": "error", "message": "Failed to subscribe", "reason": "x"}
    return list(kinds.values())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_real_frames_never_raise_anything_but_parse_error(
    sample_frames: list[Any], data: st.DataObject
) -> None:
    frame = data.draw(st.sampled_from(sample_frames))
    assert_sane_outcome(SPEC.parse, json.dumps(mutate(frame, data, _MUTATIONS)), CTX)


def test_product_names_follow_the_registry_even_when_it_grows() -> None:
    frame = (
        '{"type":"match","trade_id":1,"side":"buy","size":"1","price":"1","product_id":"XBT-USD",'
        '"time":"1970-01-01T00:00:00Z"}'
    )
    assert SPEC.parse(frame, CTX)[0].symbol == "BTCUSD"  # naming rule, with XBT folded to BTC
    undelimited = frame.replace("XBT-USD", "XBTUSD")
    registry = InstrumentRegistry()
    ctx = ParseContext(registry, 7)
    with pytest.raises(ParseError, match="cannot split"):
        SPEC.parse(undelimited, ctx)
    registry.add(Instrument("coinbase", "XBTUSD", "BTC", "USD"))
    assert SPEC.parse(undelimited, ctx)[0].symbol == "BTCUSD"


@pytest.mark.parametrize(
    "price, size", [("NaN", "1"), ("1", "Infinity"), ("-1", "1"), ("1", "0"), ("0", "1"), ("", "1")]
)
def test_trades_and_levels_that_are_not_numbers_are_refused(price: str, size: str) -> None:
    match = {"type": "match", "trade_id": 1, "side": "buy", "size": size, "price": price, "product_id": "BTC-USD",
             "time": "2021-04-17T16:43:37.089723Z"}  # fmt: skip
    with pytest.raises(ParseError):
        SPEC.parse(json.dumps(match), CTX)
    if size != "0":
        update = {"type": "l2update", "product_id": "BTC-USD", "changes": [["buy", price, size]],
                  "time": "2021-04-17T16:43:37.089723Z"}  # fmt: skip
        with pytest.raises(ParseError):
            SPEC.parse(json.dumps(update), CTX)
