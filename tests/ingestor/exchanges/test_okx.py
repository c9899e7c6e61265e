"""OKX v5 public: the parser against the real 2022 recording, the book checksum, the sequence rule, the instrument
listing, the simulator dialect round trip, and hostile input."""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from helpers import assert_not_normalized, assert_sane_outcome, json_strategy, mutate, received_json, recording
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import ParseError, SymbolError
from market_ingestor.ingestor.book import BookSync, BookVerdict
from market_ingestor.ingestor.capture import SessionRecord, read_session, received_frames, rest_bodies
from market_ingestor.ingestor.exchanges import okx
from market_ingestor.ingestor.exchanges.base import Channel, ParseContext
from market_ingestor.ingestor.exchanges.okx import PROTOCOL_CHATTER, SPEC
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, MarketEvent, Quote, Trade
from market_ingestor.simulator.dialect import SimBook, SimBookDelta, SimInstrument, SimQuote, SimTrade
from market_ingestor.simulator.okx import DIALECT

WS_RECORDING = "OKX.ws.1.0"
REST_RECORDING = "OKX.0"
CTX = ParseContext(InstrumentRegistry(), 7)
SYMBOLS = {"BTC-USDT": "BTCUSDT", "BTC-USD-220527": "BTCUSD-220527", "UNI-USD-SWAP": "UNIUSD-PERP"}


def _parse_all(records: list[SessionRecord], ctx: ParseContext = CTX) -> list[MarketEvent]:
    return [event for record in records for event in SPEC.parse(record.payload, ctx)]


@pytest.fixture(scope="module")
def records() -> list[SessionRecord]:
    return list(received_frames(recording(WS_RECORDING)))


@pytest.fixture(scope="module")
def events(records: list[SessionRecord]) -> list[MarketEvent]:
    return _parse_all(records)


# --- recorded session ---------------------------------------------------------------------------------------


def test_recorded_trades_match_an_independent_reading_exactly(events: list[MarketEvent]) -> None:
    expected: list[Trade] = []
    for frame in received_json(WS_RECORDING, parse_float=Decimal):
        if frame.get("arg", {}).get("channel") == "trades" and "data" in frame:
            for t in frame["data"]:
                symbol = SYMBOLS[t["instId"]]
                ts = int(t["ts"]) * 1_000_000
                expected.append(
                    Trade("okx", symbol, t["tradeId"], Decimal(t["px"]), Decimal(t["sz"]), t["side"], ts, 7)
                )
    trades = [e for e in events if isinstance(e, Trade)]
    assert trades == expected

    counts = Counter(t.symbol for t in trades)
    volumes = {symbol: sum((t.qty for t in trades if t.symbol == symbol), Decimal(0)) for symbol in counts}
    assert counts == {"BTCUSDT": 69, "BTCUSD-220527": 4, "UNIUSD-PERP": 1}
    assert volumes == {"BTCUSDT": Decimal("3.48657495"), "BTCUSD-220527": Decimal("35"), "UNIUSD-PERP": Decimal("100")}
    assert {t.side for t in trades} == {"buy", "sell"}


def test_first_recorded_trade_in_full(records: list[SessionRecord]) -> None:
    record = next(r for r in records if '"tradeId":"338476307"' in r.payload)
    ctx = ParseContext(InstrumentRegistry(), record.recv_ts_ns)
    assert SPEC.parse(record.payload, ctx) == [
        Trade("okx", "BTCUSDT", "338476307", Decimal("30236"), Decimal("0.0002"), "buy", 1652459224818 * 10**6,
              record.recv_ts_ns)
    ]  # fmt: skip


def test_recorded_tickers_give_quotes(events: list[MarketEvent]) -> None:
    quotes = [e for e in events if isinstance(e, Quote)]
    assert Counter(q.symbol for q in quotes) == {"BTCUSDT": 25, "BTCUSD-220527": 2, "UNIUSD-PERP": 1}
    first_spot = next(q for q in quotes if q.symbol == "BTCUSDT")
    assert first_spot == Quote(
        "okx", "BTCUSDT", Decimal("30228.6"), Decimal("0.23393"), Decimal("30228.7"), Decimal("1.55896972"),
        1652459224956 * 10**6, 7, None,
    )  # fmt: skip


def test_recorded_book_messages_all_verify_against_okx_checksum(events: list[MarketEvent]) -> None:
    books = [e for e in events if isinstance(e, BookSnapshot | BookDelta)]
    assert Counter(type(e).__name__ for e in books) == {"BookSnapshot": 3, "BookDelta": 287}
    assert all(e.checksum is not None for e in books)
    syncs: dict[str, BookSync] = {}
    verdicts = Counter()
    for event in books:
        sync = syncs.setdefault(
            event.symbol, BookSync(SPEC.book_sequence, SPEC.book_checksum, SPEC.book_checksum_depth)
        )
        verdicts[sync.on_snapshot(event) if isinstance(event, BookSnapshot) else sync.on_delta(event)] += 1
    assert verdicts == {BookVerdict.OK: 290}
    assert len(syncs["BTCUSDT"].book) > 0


def test_recorded_book_levels(events: list[MarketEvent]) -> None:
    snapshots = {e.symbol: e for e in events if isinstance(e, BookSnapshot)}
    spot = snapshots["BTCUSDT"]
    assert (len(spot.bids), len(spot.asks)) == (400, 400)
    assert spot.bids[0] == (Decimal("30243.4"), Decimal("0.0012029"))
    assert spot.asks[0] == (Decimal("30243.5"), Decimal("1.44679"))
    assert spot.bids[-1] == (Decimal("29999.7"), Decimal("0.00276686"))
    assert (spot.seq, spot.ts, spot.checksum) == (None, 1652459225381 * 10**6, 47640993)
    future = snapshots["BTCUSD-220527"]
    assert (len(future.bids), len(future.asks), future.checksum) == (72, 64, 1054815633)

    first_future_delta = next(e for e in events if isinstance(e, BookDelta) and e.symbol == "BTCUSD-220527")
    assert first_future_delta == BookDelta(
        "okx", "BTCUSD-220527",
        bids=((Decimal("30182.6"), Decimal("452")),),
        asks=((Decimal("30249.4"), Decimal(0)), (Decimal("30261"), Decimal(4)), (Decimal("30310.3"), Decimal(19))),
        first_seq=None, last_seq=None, ts=1652459225464 * 10**6, recv_ts=7, prev_seq=None, checksum=-914047754,
    )  # fmt: skip


def _replay(books: list[BookSnapshot | BookDelta]) -> BookSync:
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum, SPEC.book_checksum_depth)
    for event in books:
        verdict = sync.on_snapshot(event) if isinstance(event, BookSnapshot) else sync.on_delta(event)
        assert verdict is BookVerdict.OK
    return sync


def test_a_corrupted_or_missed_level_fails_the_checksum(events: list[MarketEvent]) -> None:
    books = [e for e in events if isinstance(e, BookSnapshot | BookDelta) and e.symbol == "BTCUSDT"]
    snapshot, deltas = books[0], books[1:]
    assert isinstance(snapshot, BookSnapshot)

    # A size off by one lot at the best bid of the snapshot.
    price, qty = snapshot.bids[0]
    bad_snapshot = msgspec.structs.replace(snapshot, bids=((price, qty + Decimal("0.00000001")), *snapshot.bids[1:]))
    assert BookSync(SPEC.book_sequence, SPEC.book_checksum, 25).on_snapshot(bad_snapshot) is BookVerdict.CHECKSUM

    # A delta whose first changed level has a different size.
    sync = _replay([snapshot, *deltas[:4]])
    delta = deltas[4]
    assert isinstance(delta, BookDelta) and delta.asks
    price, qty = delta.asks[0]
    bad_delta = msgspec.structs.replace(delta, asks=((price, qty + 1), *delta.asks[1:]))
    assert sync.on_delta(bad_delta) is BookVerdict.CHECKSUM

    # A lost update: the next one no longer matches (the 2022 stream has no sequence ids: only the checksum tells).
    sync = _replay([snapshot])
    assert isinstance(deltas[1], BookDelta)
    assert sync.on_delta(deltas[1]) is BookVerdict.CHECKSUM


def test_checksum_interleaves_bids_and_asks_and_the_longer_side_continues_alone() -> None:
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9"), ("3368", "8"), ("3372", "8")]
    crc = zlib.crc32(b"3366.1:7:3366.8:9:3366:6:3368:8:3372:8")
    expected = crc - 2**32 if crc >= 2**31 else crc
    assert okx.book_checksum(bids, asks) == expected
    # Signed: a CRC at or above 2**31 is negative; only the top 25 levels count.
    many = [(str(100 + i), "1") for i in range(30)]
    assert okx.book_checksum(many, []) == okx.book_checksum(many[:25], [])
    assert any(okx.book_checksum([(str(i), "1")], []) < 0 for i in range(20))


def _book_frame(action: str, seq: int, prev: int, asks: list[list[str]], bids: list[list[str]]) -> str:
    data = {"asks": asks, "bids": bids, "ts": "1700000000000", "checksum": 0, "prevSeqId": prev, "seqId": seq}
    return json.dumps({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]})


def test_sequence_ids_chain_updates_and_a_skipped_id_is_a_gap() -> None:
    snapshot = SPEC.parse(_book_frame("snapshot", 100, -1, [["10.5", "1", "0", "1"]], [["10", "2", "0", "1"]]), CTX)
    update = SPEC.parse(_book_frame("update", 104, 100, [["10.5", "3", "0", "2"]], []), CTX)
    heartbeat = SPEC.parse(_book_frame("update", 104, 104, [], []), CTX)
    reset = SPEC.parse(_book_frame("update", 7, 104, [], [["9", "1", "0", "1"]]), CTX)  # seqId reset: smaller
    skipped = SPEC.parse(_book_frame("update", 12, 9, [], [["9", "0", "0", "0"]]), CTX)  # follows 9, book is at 7
    assert snapshot == [
        BookSnapshot("okx", "BTCUSDT", ((Decimal(10), Decimal(2)),), ((Decimal("10.5"), Decimal(1)),), 100,
                     1700000000000 * 10**6, 7, None)
    ]  # fmt: skip
    assert update == [  # checksum 0: OKX stopped computing it; the sequence ids guard the book
        BookDelta("okx", "BTCUSDT", (), ((Decimal("10.5"), Decimal(3)),), 104, 104, 1700000000000 * 10**6, 7, 100, None)
    ]
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum, SPEC.book_checksum_depth)
    assert isinstance(snapshot[0], BookSnapshot)
    assert sync.on_snapshot(snapshot[0]) is BookVerdict.OK
    verdicts = [sync.on_delta(d[0]) for d in (update, heartbeat, reset, skipped) if isinstance(d[0], BookDelta)]
    assert verdicts == [BookVerdict.OK, BookVerdict.OK, BookVerdict.OK, BookVerdict.GAP]
    assert sync.book.best_ask == (Decimal("10.5"), Decimal(3))


def test_bbo_tbt_gives_a_quote_with_its_sequence_id() -> None:
    frame = (
        '{"arg":{"channel":"bbo-tbt","instId":"UNI-USD-SWAP"},"data":[{"asks":[["5.142","25","0","2"]],'
        '"bids":[["5.134","96","0","3"]],"ts":"1652459223143","seqId":363996337}]}'
    )
    assert SPEC.parse(frame, CTX) == [
        Quote("okx", "UNIUSD-PERP", Decimal("5.134"), Decimal("96"), Decimal("5.142"), Decimal("25"),
              1652459223143 * 10**6, 7, 363996337)
    ]  # fmt: skip
    empty_side = '{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[],"bids":[],"ts":"1"}]}'
    assert_not_normalized(SPEC.parse, empty_side, CTX, "bbo-tbt", "incomplete")
    empty_ticker = (
        '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","bidPx":"","bidSz":"",'
        '"askPx":"30228.7","askSz":"1","ts":"1"}]}'
    )
    assert_not_normalized(SPEC.parse, empty_ticker, CTX, "tickers", "incomplete")


def test_control_frames_parse_to_nothing_and_errors_are_parse_errors(records: list[SessionRecord]) -> None:
    assert SPEC.protocol_chatter == PROTOCOL_CHATTER == {"subscribe", "unsubscribe", "notice", "channel-conn-count",
                                                         "pong"}  # fmt: skip
    acks = [r for r in records if r.payload.startswith('{"event":"subscribe"')]
    assert len(acks) == 18
    assert all(SPEC.parse(r.payload, CTX) == [] for r in acks)
    assert SPEC.parse("pong", CTX) == [] and SPEC.parse(b"pong", CTX) == []
    assert SPEC.parse('{"event":"notice","code":"64008","msg":"The connection will soon be closed."}', CTX) == []
    candle = '{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1","2","3","4","5","6","7","8","0"]]}'
    assert_not_normalized(SPEC.parse, candle, CTX, "candle1m", "unhandled")
    assert_not_normalized(SPEC.parse, '{"event":"login","code":"0","msg":""}', CTX, "login", "unhandled")
    with pytest.raises(ParseError, match="60012"):
        SPEC.parse('{"event":"error","code":"60012","msg":"Invalid request: {}","connId":"a4d3ae55"}', CTX)
    for bad in ("ping", "", "{}", '{"arg":{"channel":"trades","instId":"BTC-USDT"}}', "[1,2]"):
        with pytest.raises(ParseError):
            SPEC.parse(bad, CTX)
    option = '{"arg":{"channel":"trades","instId":"X"},"data":[{"instId":"BTC-USD-220514-22000-C","tradeId":"1",' \
             '"px":"1","sz":"1","side":"buy","ts":"1"}]}'  # fmt: skip
    with pytest.raises(ParseError, match="not a spot, swap or futures"):
        SPEC.parse(option, CTX)


# --- instruments, symbols, subscriptions --------------------------------------------------------------------


@pytest.fixture(scope="module")
def listings() -> dict[str, bytes]:
    """The first REST body per URL (the recording repeats each listing four times)."""
    bodies: dict[str, bytes] = {}
    for record in rest_bodies(recording(REST_RECORDING)):
        bodies.setdefault(record.url or "", record.payload.encode())
    return bodies


def test_instrument_listing_covers_spot_swaps_and_futures(listings: dict[str, bytes]) -> None:
    by_type: dict[str, int] = {}
    parsed = []
    for url, body in listings.items():
        inst_type = url.split("instType=")[1].split("&")[0]
        by_type[inst_type] = by_type.get(inst_type, 0) + len(json.loads(body)["data"])
        parsed.extend(SPEC.parse_instruments(body))
    assert by_type == {"SPOT": 513, "SWAP": 166, "FUTURES": 104, "OPTION": 346 + 350}
    assert Counter(i.kind for i in parsed) == {"spot": 513, "perpetual": 166, "future": 104}  # options skipped

    registry = InstrumentRegistry(parsed)
    assert registry.by_native("okx", "BTC-USDT").symbol == "BTCUSDT"
    assert registry.by_native("okx", "BTC-USD-SWAP").symbol == "BTCUSD-PERP"  # inverse: ctValCcy USD, settle BTC
    assert registry.by_native("okx", "BTC-USDT-SWAP").symbol == "BTCUSDT-PERP"  # linear: ctValCcy BTC, settle USDT
    assert registry.by_native("okx", "UNI-USD-SWAP").symbol == "UNIUSD-PERP"
    future = registry.by_native("okx", "BTC-USD-220527")
    assert (future.symbol, future.kind, future.suffix) == ("BTCUSD-220527", "future", "220527")
    # The listing and the naming rule agree on every instrument, and no two instruments share a symbol.
    assert all(okx.symbol_of(i.native) == i.symbol for i in parsed)
    assert len({i.symbol for i in parsed}) == len(parsed)

    with pytest.raises(ParseError, match="50011"):
        SPEC.parse_instruments(b'{"code":"50011","msg":"Too Many Requests","data":[]}')
    with pytest.raises(ParseError):
        SPEC.parse_instruments(b"<html>")


def test_recorded_session_names_are_the_same_with_the_listing(
    records: list[SessionRecord], events: list[MarketEvent], listings: dict[str, bytes]
) -> None:
    registry = InstrumentRegistry(i for body in listings.values() for i in SPEC.parse_instruments(body))
    with_listing = _parse_all(records, ParseContext(registry, 7))
    assert with_listing == events
    assert {e.symbol for e in events} == set(SYMBOLS.values())
    assert SPEC.native_symbol("UNIUSD-PERP", registry) == "UNI-USD-SWAP"
    assert SPEC.native_symbol("BTCUSD-220527", registry) == "BTC-USD-220527"
    with pytest.raises(SymbolError):
        SPEC.native_symbol("BTCUSDT", InstrumentRegistry())


def test_subscribe_frames_are_okx_ops() -> None:
    assert SPEC.subscribe(["BTC-USDT", "UNI-USD-SWAP"], [Channel.TRADES, Channel.BOOK]) == [
        '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"},{"channel":"trades","instId":"UNI-USD-SWAP"},'
        '{"channel":"books","instId":"BTC-USDT"},{"channel":"books","instId":"UNI-USD-SWAP"}]}'
    ]
    assert SPEC.unsubscribe(["BTC-USDT"], [Channel.QUOTES]) == [
        '{"op":"unsubscribe","args":[{"channel":"bbo-tbt","instId":"BTC-USDT"}]}'
    ]
    assert SPEC.subscribe([], [Channel.TRADES]) == []
    assert (SPEC.ws_url, SPEC.rest_url, SPEC.keepalive_frame) == ("wss://ws.okx.com:8443/ws/v5/public",
                                                                 "https://www.okx.com", "ping")  # fmt: skip
    assert (SPEC.book_resync, SPEC.book_checksum_depth, SPEC.contiguous_trade_ids) == ("resubscribe", 25, False)


# --- simulator dialect --------------------------------------------------------------------------------------

INSTRUMENT = SimInstrument("BTC", "USDT", Decimal("0.1"), Decimal("0.00000001"))


def _sim_books(seed: int, steps: int) -> tuple[SimBook, list[SimBookDelta]]:
    """A random book (30 levels a side, so the checksum's 25 matter) and deltas that change, add and remove levels."""
    rng = random.Random(seed)
    tick, lot = Decimal("0.1"), Decimal("0.000001")
    sides = {
        "bids": {Decimal(30000) - i * tick: rng.randint(1, 10**6) * lot for i in range(30)},
        "asks": {Decimal(30001) + i * tick: rng.randint(1, 10**6) * lot for i in range(30)},
    }

    def book(seq: int, ts_ns: int) -> SimBook:
        return SimBook(
            tuple(sorted(sides["bids"].items(), reverse=True)), tuple(sorted(sides["asks"].items())), seq, ts_ns
        )

    first = book(1000, 1_700_000_000_000_000_000)
    deltas = []
    for n in range(1, steps + 1):
        changes: dict[str, list[tuple[Decimal, Decimal]]] = {"bids": [], "asks": []}
        for side, levels in sides.items():
            for _ in range(rng.randint(0, 3)):
                if levels and rng.random() < 0.3:
                    price = rng.choice(sorted(levels))
                    del levels[price]
                    changes[side].append((price, Decimal(0)))
                else:
                    offset = rng.randint(0, 40) * tick
                    price = Decimal(30000) - offset if side == "bids" else Decimal(30001) + offset
                    levels[price] = rng.randint(1, 10**6) * lot
                    changes[side].append((price, levels[price]))
        seq = 1000 + 3 * n
        after = book(seq, first.ts_ns + n * 1_000_000)
        deltas.append(
            SimBookDelta(tuple(changes["bids"]), tuple(changes["asks"]), seq - 2, seq, seq - 3, after.ts_ns, after)
        )
    return first, deltas


def test_simulated_trades_and_quotes_parse_back_to_the_same_values() -> None:
    native = DIALECT.native(INSTRUMENT)
    assert native == "BTC-USDT"
    trades = [
        SimTrade(5, Decimal("30000.1"), Decimal("0.00000001"), "buy", 1_700_000_000_123_000_000),
        SimTrade(6, Decimal("29999.9"), Decimal("12.5"), "sell", 1_700_000_000_124_000_000),
    ]
    frames = DIALECT.render_trades(native, trades)
    assert len(frames) == 2
    parsed = [e for frame in frames for e in SPEC.parse(frame, CTX)]
    assert parsed == [
        Trade("okx", "BTCUSDT", str(t.trade_id), t.price, t.qty, t.side, t.ts_ns, 7) for t in trades
    ]  # fmt: skip
    quote = SimQuote(
        Decimal("29999.9"), Decimal("1.5"), Decimal("30000.1"), Decimal("0.25"), 42, 1_700_000_000_500_000_000
    )
    assert SPEC.parse(DIALECT.render_quote(native, quote), CTX) == [
        Quote("okx", "BTCUSDT", quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty, quote.ts_ns, 7, 42)
    ]


def test_simulated_books_carry_checksums_and_sequence_ids_that_verify() -> None:
    native = DIALECT.native(INSTRUMENT)
    first, deltas = _sim_books(seed=3, steps=200)
    assert DIALECT.render_book_snapshot is not None
    (snapshot,) = SPEC.parse(DIALECT.render_book_snapshot(native, first), CTX)
    assert isinstance(snapshot, BookSnapshot)
    assert (snapshot.bids, snapshot.asks, snapshot.seq, snapshot.ts) == (first.bids, first.asks, 1000, first.ts_ns)
    sync = BookSync(SPEC.book_sequence, SPEC.book_checksum, SPEC.book_checksum_depth)
    assert sync.on_snapshot(snapshot) is BookVerdict.OK
    for delta in deltas:
        (event,) = SPEC.parse(DIALECT.render_book_delta(native, delta), CTX)
        assert isinstance(event, BookDelta)
        assert (event.bids, event.asks, event.prev_seq, event.last_seq) == (
            delta.bids, delta.asks, delta.prev_seq, delta.last_seq)  # fmt: skip
        assert sync.on_delta(event) is BookVerdict.OK
        assert sync.book.top(1000) == (list(delta.book.bids), list(delta.book.asks))
    # A gap fault (prev_seq not the book's seq) is caught by the sequence rule.
    last = deltas[-1]
    gap = SimBookDelta((), (), last.last_seq + 5, last.last_seq + 5, last.last_seq + 4, last.ts_ns, last.book)
    (event,) = SPEC.parse(DIALECT.render_book_delta(native, gap), CTX)
    assert isinstance(event, BookDelta)
    assert sync.on_delta(event) is BookVerdict.GAP


def test_simulated_listing_and_client_frames() -> None:
    instruments = [INSTRUMENT, SimInstrument("ETH", "BTC", Decimal("0.00001"), Decimal("0.001"))]
    registry = InstrumentRegistry(SPEC.parse_instruments(DIALECT.render_instruments(instruments)))
    assert registry.symbols("okx") == ["BTCUSDT", "ETHBTC"]
    assert SPEC.native_symbol("ETHBTC", registry) == "ETH-BTC"

    natives = ["BTC-USDT", "ETH-BTC"]
    (frame,) = SPEC.subscribe(natives, list(Channel))
    request = DIALECT.parse_client_frame(frame)
    assert request.action == "subscribe"
    assert set(request.subscriptions) == {(channel, native) for channel in Channel for native in natives}
    assert len(request.replies) == 6 and all(SPEC.parse(reply, CTX) == [] for reply in request.replies)
    assert json.loads(request.replies[0]) == {
        "event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"}, "connId": "a4d3ae55"
    }  # fmt: skip
    (frame,) = SPEC.unsubscribe(natives[:1], [Channel.BOOK])
    request = DIALECT.parse_client_frame(frame)
    assert (request.action, request.subscriptions) == ("unsubscribe", ((Channel.BOOK, "BTC-USDT"),))

    ping = DIALECT.parse_client_frame(SPEC.keepalive_frame or "")
    assert (ping.action, ping.replies) == ("ping", ("pong",))
    assert SPEC.parse(ping.replies[0], CTX) == []
    for garbage in ("hello", "{}", '{"op":"subscribe","args":[]}', '{"op":"login","args":[{"channel":"x"}]}'):
        refused = DIALECT.parse_client_frame(garbage)
        assert refused.action == "invalid"
        with pytest.raises(ParseError, match="60012"):
            SPEC.parse(refused.replies[0], CTX)
    unknown = DIALECT.parse_client_frame('{"op":"subscribe","args":[{"channel":"nope","instId":"BTC-USDT"}]}')
    assert unknown.action == "invalid"
    with pytest.raises(ParseError, match="60018"):
        SPEC.parse(unknown.replies[0], CTX)


def test_recorded_client_frames_are_understood_by_the_dialect() -> None:
    sent = [r for r in read_session(recording(WS_RECORDING)) if r.kind == "sent"]
    assert len(sent) == 3
    last = DIALECT.parse_client_frame(sent[-1].payload)
    assert last.action == "subscribe"
    assert set(last.subscriptions) == {(channel, native) for channel in Channel for native in SYMBOLS}


# --- hostile input ------------------------------------------------------------------------------------------

_json_values = json_strategy(st.text(max_size=8), text_size=12, dict_size=4, max_leaves=16)
_FIELDS = ["instId", "tradeId", "px", "sz", "side", "ts", "bidPx", "bidSz", "askPx", "askSz", "asks", "bids",
           "checksum", "seqId", "prevSeqId"]  # fmt: skip
_shaped = st.fixed_dictionaries(
    {
        "arg": st.fixed_dictionaries(
            {"channel": st.sampled_from(sorted(okx._HANDLERS)), "instId": st.text(max_size=12)}
        ),
        "data": st.lists(st.dictionaries(st.sampled_from(_FIELDS), _json_values, max_size=8), max_size=3),
    },
    optional={"action": st.sampled_from(["snapshot", "update", "partial"]), "event": st.text(max_size=6)},
)
_MUTATIONS = _json_values | st.sampled_from(["", "NaN", "-1", "1e400", "Infinity", "0", "buy", "pong"])


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
    """One real frame of each kind (snapshots cut to 5 levels a side), plus today's shapes with sequence ids."""
    kinds: dict[str, Any] = {}
    for record in records:
        frame = json.loads(record.payload)
        kinds.setdefault(frame.get("event") or f"{frame['arg']['channel']}.{frame.get('action')}", frame)
    for frame in kinds.values():
        for book in frame.get("data", []) if frame.get("action") == "snapshot" else []:
            book["asks"], book["bids"] = book["asks"][:5], book["bids"][:5]
    modern = [
        json.loads(_book_frame("snapshot", 10, -1, [["10.5", "1", "0", "1"]], [["10", "2", "0", "1"]])),
        json.loads(_book_frame("update", 11, 10, [["10.5", "0", "0", "0"]], [])),
        {"arg": {"channel": "bbo-tbt", "instId": "BTC-USDT"},
         "data": [{"asks": [["5.1", "2", "0", "1"]], "bids": [["5", "1", "0", "1"]], "ts": "1", "seqId": 3}]},
        {"event": "error", "code": "60012", "msg": "Invalid request"},
    ]  # fmt: skip
    return [*kinds.values(), *modern]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_real_frames_never_raise_anything_but_parse_error(
    sample_frames: list[Any], data: st.DataObject
) -> None:
    frame = data.draw(st.sampled_from(sample_frames))
    assert_sane_outcome(SPEC.parse, json.dumps(mutate(frame, data, _MUTATIONS)), CTX)


@pytest.mark.parametrize("px, sz", [("NaN", "1"), ("1", "Infinity"), ("-1", "1"), ("1", "0"), ("0", "1"), ("", "1")])
def test_trades_and_levels_that_are_not_numbers_are_refused(px: str, sz: str) -> None:
    trade = {"instId": "BTC-USDT", "tradeId": "1", "px": px, "sz": sz, "side": "buy", "ts": "1"}
    with pytest.raises(ParseError):
        SPEC.parse(json.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [trade]}), CTX)
    if sz != "0":
        with pytest.raises(ParseError):
            SPEC.parse(_book_frame("update", 2, 1, [[px, sz, "0", "1"]], []), CTX)
