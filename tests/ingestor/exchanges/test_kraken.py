"""Kraken: v1 recordings (trades, depth-1000 books with checksums, AssetPairs), v2 live frames, the simulator's
v2 dialect, and parse robustness."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from helpers import assert_not_normalized, json_strategy, parsed_or_refused, received_json, recording
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import NotNormalized, ParseError, SymbolError
from market_ingestor.ingestor.book import BookSync, BookVerdict
from market_ingestor.ingestor.capture import received_frames, rest_bodies
from market_ingestor.ingestor.exchanges import get_spec
from market_ingestor.ingestor.exchanges.base import ALL_CHANNELS, Channel, ParseContext
from market_ingestor.ingestor.exchanges.kraken import (
    PROTOCOL_CHATTER,
    SPEC,
    book_checksum,
    epoch_text_ns,
    native_symbol,
    parse,
    parse_instruments,
    rfc3339_ns,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, MarketEvent, Quote, Trade
from market_ingestor.simulator.dialect import SimBook, SimBookDelta, SimInstrument, SimQuote, SimTrade
from market_ingestor.simulator.kraken import DIALECT, rfc3339

EMPTY = ParseContext(InstrumentRegistry(), 7)
D = Decimal


@pytest.fixture(scope="module")
def registry() -> InstrumentRegistry:
    body = next(rest_bodies(recording("KRAKEN.0"))).payload.encode()
    return InstrumentRegistry(parse_instruments(body))


def recorded(name: str) -> Iterator[tuple[str, int]]:
    """(frame, receipt time) of every frame the exchange sent in a recording."""
    for record in received_frames(recording(name)):
        yield record.payload, record.recv_ts_ns


def kraken_symbol(pair: str) -> str:
    aliases = {"XBT": "BTC", "XDG": "DOGE"}
    base, quote = pair.split("/")
    return aliases.get(base, base) + aliases.get(quote, quote)


# --- instruments ------------------------------------------------------------------------------------------------


def test_asset_pairs_listing_names_instruments_the_v2_way(registry: InstrumentRegistry) -> None:
    body = json.loads(next(rest_bodies(recording("KRAKEN.0"))).payload)
    on_ws = [pair["wsname"] for pair in body["result"].values() if "wsname" in pair]
    nameable = [name for name in on_ws if all(part.isalnum() for part in name.split("/"))]
    assert (len(body["result"]), len(on_ws), len(nameable)) == (304, 293, 292)  # 11 dark pools, ETH2.S/ETH
    aliases = {"XBT": "BTC", "XDG": "DOGE"}
    expected = {"/".join(aliases.get(part, part) for part in name.split("/")) for name in nameable}

    instruments = parse_instruments(next(rest_bodies(recording("KRAKEN.0"))).payload.encode())
    assert {instrument.native for instrument in instruments} == expected
    assert len(instruments) == 292
    assert registry.by_native("kraken", "BTC/USD") == Instrument("kraken", "BTC/USD", "BTC", "USD")
    assert registry.by_symbol("kraken", "DOGEUSD").native == "DOGE/USD"
    assert registry.by_symbol("kraken", "ETHBTC").native == "ETH/BTC"
    # v1 spellings and v2 names normalize alike
    assert registry.normalize("kraken", "XBT/USD") == registry.normalize("kraken", "BTC/USD") == "BTCUSD"
    assert registry.normalize("kraken", "XDG/USD") == "DOGEUSD"
    assert registry.normalize("kraken", "ADA/XBT") == "ADABTC"
    with pytest.raises(SymbolError):
        registry.by_native("kraken", "XBT/USD.d")


def test_asset_pairs_errors_and_garbage_are_parse_errors() -> None:
    with pytest.raises(ParseError, match="EGeneral:Too many requests"):
        parse_instruments(b'{"error":["EGeneral:Too many requests"],"result":{}}')
    with pytest.raises(ParseError, match="AssetPairs"):
        parse_instruments(b"<html>")


def test_native_symbol_comes_from_the_listing_or_a_delimited_symbol(registry: InstrumentRegistry) -> None:
    assert native_symbol("BTCUSD", registry) == "BTC/USD"
    assert native_symbol("DOGEEUR", registry) == "DOGE/EUR"
    assert native_symbol("btc-usd", InstrumentRegistry()) == "BTC/USD"
    assert native_symbol("XBT/EUR", InstrumentRegistry()) == "BTC/EUR"
    with pytest.raises(SymbolError, match="BTCUSD"):
        native_symbol("BTCUSD", InstrumentRegistry())


@pytest.mark.parametrize(
    ("native", "symbol"), [("XBT/USD", "BTCUSD"), ("XDG/USD", "DOGEUSD"), ("BTC/USD", "BTCUSD"), ("ETH/XBT", "ETHBTC")]
)
def test_names_normalize_without_a_listing(native: str, symbol: str) -> None:
    v1 = f'[0,[["1.5","2.5","1618678142.557535","b","m",""]],"trade","{native}"]'
    v2 = (
        f'{{"channel":"trade","type":"update","data":[{{"symbol":"{native}","side":"buy","price":1.5,"qty":2.5,'
        '"ord_type":"limit","trade_id":1,"timestamp":"2021-04-17T16:49:02.557535Z"}]}'
    )
    assert [event.symbol for event in parse(v1, EMPTY) + parse(v2, EMPTY)] == [symbol, symbol]


# --- recorded v1 trades -----------------------------------------------------------------------------------------


def test_recorded_trades_counts_and_volumes_per_symbol(registry: InstrumentRegistry) -> None:
    counts: Counter[str] = Counter()
    volumes: defaultdict[str, Decimal] = defaultdict(Decimal)
    for frame in received_json("KRAKEN.ws.48.0"):
        if isinstance(frame, list) and frame[-2] == "trade":
            for trade in frame[1]:
                counts[kraken_symbol(frame[-1])] += 1
                volumes[kraken_symbol(frame[-1])] += Decimal(trade[1])

    events = [e for frame, ts in recorded("KRAKEN.ws.48.0") for e in parse(frame, ParseContext(registry, ts))]
    trades = [e for e in events if isinstance(e, Trade)]
    assert len(trades) == len(events)
    got_counts = Counter(trade.symbol for trade in trades)
    got_volumes: defaultdict[str, Decimal] = defaultdict(Decimal)
    for trade in trades:
        got_volumes[trade.symbol] += trade.qty
    assert got_counts == counts == {"XMRUSD": 4, "SCEUR": 6}
    assert got_volumes == volumes == {"XMRUSD": D("4.15284339"), "SCEUR": D("52944.61056448")}
    assert len({trade.trade_id for trade in trades}) == 10


def test_a_recorded_two_trade_frame_normalizes_completely(registry: InstrumentRegistry) -> None:
    frame = next(f for f, _ in recorded("KRAKEN.ws.48.0") if f.startswith("[993") and "1618678150" in f)
    assert parse(frame, ParseContext(registry, 99)) == [
        Trade("kraken", "XMRUSD", "1618678150.826417-0", D("354.04000000"), D("0.28245396"), "sell",
              1_618_678_150_826_417_000, 99),
        Trade("kraken", "XMRUSD", "1618678150.827816-1", D("353.81000000"), D("1.71754604"), "sell",
              1_618_678_150_827_816_000, 99),
    ]  # fmt: skip
    buy = next(f for f, _ in recorded("KRAKEN.ws.48.0") if "1618678145.715785" in f)
    (trade,) = parse(buy, EMPTY)
    assert isinstance(trade, Trade)
    assert (trade.side, trade.price, str(trade.price), trade.symbol) == ("buy", D("354.55"), "354.55000000", "XMRUSD")


def test_recorded_control_frames_parse_to_nothing(registry: InstrumentRegistry) -> None:
    controls = [frame for frame, _ in recorded("KRAKEN.ws.48.0") if frame.startswith("{")]
    controls += [frame for frame, _ in recorded("KRAKEN.ws.50.0") if frame.startswith("{")]
    assert len(controls) == 83  # heartbeats, systemStatus, subscriptionStatus on both connections
    assert all(parse(frame, ParseContext(registry, 1)) == [] for frame in controls)


# --- recorded v1 books and checksums ----------------------------------------------------------------------------


def book_events(registry: InstrumentRegistry) -> list[BookSnapshot | BookDelta]:
    events = [e for frame, ts in recorded("KRAKEN.ws.50.0") for e in parse(frame, ParseContext(registry, ts))]
    books = [e for e in events if isinstance(e, BookSnapshot | BookDelta)]
    assert len(books) == len(events)
    return books


def one_delta(frame: str) -> BookDelta:
    (event,) = parse(frame, EMPTY)
    assert isinstance(event, BookDelta)
    return event


def new_sync() -> BookSync:
    return BookSync(SPEC.book_sequence, SPEC.book_checksum, SPEC.book_checksum_depth)


def feed(sync: BookSync, event: BookSnapshot | BookDelta) -> BookVerdict:
    return sync.on_snapshot(event) if isinstance(event, BookSnapshot) else sync.on_delta(event)


def test_every_recorded_book_update_verifies_its_checksum(registry: InstrumentRegistry) -> None:
    frames = [f for f in received_json("KRAKEN.ws.50.0") if isinstance(f, list)]
    snapshots = sum(1 for f in frames if "as" in f[1])
    updates = sum(1 for f in frames if "as" not in f[1])
    assert (snapshots, updates) == (10, 4269)

    events = book_events(registry)
    syncs: defaultdict[str, BookSync] = defaultdict(new_sync)
    verdicts = Counter((type(e).__name__, feed(syncs[e.symbol], e)) for e in events)
    assert verdicts == {("BookSnapshot", BookVerdict.OK): 10, ("BookDelta", BookVerdict.OK): 4269}
    assert all(e.checksum is not None for e in events if isinstance(e, BookDelta))
    assert sorted(syncs) == ["ADABTC", "BTCCHF", "ETHCHF", "GRTETH", "KSMBTC", "OCEANBTC", "OMGUSD", "SCEUR",
                             "WAVESEUR", "XMRUSD"]  # fmt: skip
    # No book came near the subscribed 1000 levels, so truncating to the depth could not change a top 10 here.
    assert max(max(len(s.book.top(2000)[0]), len(s.book.top(2000)[1])) for s in syncs.values()) < 1000


def test_recorded_book_snapshot_and_updates_spot_checked(registry: InstrumentRegistry) -> None:
    events = book_events(registry)
    ada = next(e for e in events if isinstance(e, BookSnapshot) and e.symbol == "ADABTC")
    assert (len(ada.asks), len(ada.bids), ada.seq, ada.checksum) == (841, 707, None, None)
    assert ada.asks[0] == (D("0.000022900"), D("13355.87450757")) and str(ada.asks[0][0]) == "0.000022900"
    assert ada.asks[1] == (D("0.000022910"), D("15283.79025460"))
    assert ada.bids[0][0] < ada.asks[0][0]
    snapshot_frame = next(f for f in received_json("KRAKEN.ws.50.0") if isinstance(f, list) and f[0] == 1360)
    latest = max(Decimal(level[2]) for side in ("as", "bs") for level in snapshot_frame[1][side])
    assert ada.ts == int(latest * 1_000_000_000)

    delete = one_delta(next(f for f, _ in recorded("KRAKEN.ws.50.0") if '["358.20000000","0.00000000"' in f))
    assert delete == BookDelta("kraken", "XMRUSD", (), ((D("358.20000000"), D("0E-8")),), None, None,
                               1_618_678_133_737_002_000, 7, None, 1453093704)  # fmt: skip
    both = one_delta(next(f for f, _ in recorded("KRAKEN.ws.50.0") if '"4105471083"' in f))
    assert both.asks == ((D("0.042990"), D("364630.28272081")),)
    assert both.bids == ((D("0.042990"), D("0")),)
    assert (both.checksum, both.ts) == (4105471083, 1_618_678_145_920_708_000)


def test_a_corrupted_level_fails_the_checksum(registry: InstrumentRegistry) -> None:
    events = [e for e in book_events(registry) if e.symbol == "XMRUSD"]
    snapshot, first = events[0], events[1]
    assert isinstance(snapshot, BookSnapshot) and isinstance(first, BookDelta)
    touched = {price for price, _ in first.asks + first.bids}
    index = next(i for i, (price, _) in enumerate(snapshot.asks[:10]) if price not in touched)
    price, qty = snapshot.asks[index]
    corrupted = (*snapshot.asks[:index], (price, qty + D("0.00000001")), *snapshot.asks[index + 1 :])

    sync = new_sync()
    assert sync.on_snapshot(snapshot) is BookVerdict.OK and sync.on_delta(first) is BookVerdict.OK
    sync = new_sync()
    sync.on_snapshot(BookSnapshot("kraken", "XMRUSD", snapshot.bids, corrupted, None, snapshot.ts, 0))
    assert sync.on_delta(first) is BookVerdict.CHECKSUM


def test_no_sequence_numbers_a_skipped_update_shows_as_a_checksum_mismatch(registry: InstrumentRegistry) -> None:
    assert SPEC.book_sequence is None and SPEC.book_resync == "resubscribe"
    events = [e for e in book_events(registry) if e.symbol == "XMRUSD"]
    snapshot, deltas = events[0], [e for e in events[1:] if isinstance(e, BookDelta)]
    assert isinstance(snapshot, BookSnapshot) and len(deltas) == len(events) - 1
    # skip the first update that changed the top 10 (its checksum differs from the one before)
    skip = next(i for i in range(1, len(deltas)) if deltas[i].checksum != deltas[i - 1].checksum)
    sync = new_sync()
    sync.on_snapshot(snapshot)
    assert all(sync.on_delta(delta) is BookVerdict.OK for delta in deltas[:skip])
    assert sync.on_delta(deltas[skip + 1]) is BookVerdict.CHECKSUM


def test_checksum_matches_krakens_documented_example() -> None:
    # The v2 checksum guide's BTC/USD book (top 10 per side) and its published checksum.
    frame = (
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":['
        '{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},{"price":45282.1,"qty":0.10000000},'
        '{"price":45281.0,"qty":0.10000000},{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},'
        '{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},{"price":45277.3,"qty":1.54602737},'
        '{"price":45276.6,"qty":0.15445238}],"asks":['
        '{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},{"price":45286.6,"qty":1.54571109},'
        '{"price":45289.6,"qty":1.54560911},{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},'
        '{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},{"price":45297.5,"qty":0.09945542},'
        '{"price":45299.5,"qty":0.18772827}],"checksum":3310070434,"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
    )
    (snapshot,) = parse(frame, EMPTY)
    assert isinstance(snapshot, BookSnapshot) and snapshot.checksum == 3310070434
    assert str(snapshot.bids[0][1]) == "0.10000000" and str(snapshot.bids[3][0]) == "45281.0"  # digits kept
    assert new_sync().on_snapshot(snapshot) is BookVerdict.OK
    # the string the CRC covers starts with the best ask: 45285.2 / 0.00100000 -> "452852" + "100000"
    assert book_checksum([], [("45285.2", "0.00100000")]) == book_checksum([], [("452852", "100000")])
    # asks come first in the string, then bids; only the top 10 of each count
    assert book_checksum([("1.0", "2")], [("3.0", "4")]) == book_checksum([], [("30", "4"), ("10", "2")])
    top10 = [(f"{i}.5", "1") for i in range(1, 11)]
    assert book_checksum([*top10, ("99.9", "1")], []) == book_checksum(top10, [])


# --- v2 frames --------------------------------------------------------------------------------------------------


def test_v2_trade_frame(registry: InstrumentRegistry) -> None:
    frame = (
        '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":77313.3,'
        '"qty":0.0084064,"ord_type":"limit","trade_id":107612614,"timestamp":"2026-09-13T20:52:59.976634Z"},'
        '{"symbol":"BTC/USD","side":"sell","price":77313.2,"qty":1.00000000,"ord_type":"market","trade_id":107612615,'
        '"timestamp":"2026-09-13T20:52:59.976634Z"}]}'
    )
    assert parse(frame.encode(), ParseContext(registry, 5)) == [
        Trade("kraken", "BTCUSD", "107612614", D("77313.3"), D("0.0084064"), "buy", 1_789_332_779_976_634_000, 5),
        Trade("kraken", "BTCUSD", "107612615", D("77313.2"), D("1.00000000"), "sell", 1_789_332_779_976_634_000, 5),
    ]
    assert SPEC.contiguous_trade_ids


def test_v2_ticker_frame() -> None:
    frame = (
        '{"channel":"ticker","type":"snapshot","data":[{"symbol":"ALGO/USD","bid":0.10025,"bid_qty":740.0,'
        '"ask":0.10036,"ask_qty":1361.44813783,"last":0.10035,"volume":997038.98383185,"vwap":0.10148,'
        '"low":0.09979,"high":0.10285,"change":-0.00017,"change_pct":-0.17,"timestamp":"2023-09-25T09:04:31.742648Z"}]}'
    )
    assert parse(frame, EMPTY) == [
        Quote("kraken", "ALGOUSD", D("0.10025"), D("740.0"), D("0.10036"), D("1361.44813783"),
              1_695_632_671_742_648_000, 7)
    ]  # fmt: skip
    untimed = frame.replace(',"timestamp":"2023-09-25T09:04:31.742648Z"', "")
    (quote,) = parse(untimed, EMPTY)
    assert isinstance(quote, Quote) and quote.ts == 7  # older ticker messages carry no time: receipt time


def test_v2_book_update_removes_and_keeps_digits() -> None:
    frame = (
        '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62710.4,"qty":0.01},'
        '{"price":62709.1,"qty":0.0}],"asks":[{"price":62710.5,"qty":0.93111634}],"checksum":1361442827,'
        '"timestamp":"2026-07-09T17:20:01.123456Z"}]}'
    )
    assert parse(frame, EMPTY) == [
        BookDelta("kraken", "BTCUSD", ((D("62710.4"), D("0.01")), (D("62709.1"), D("0.0"))),
                  ((D("62710.5"), D("0.93111634")),), None, None, 1_783_617_601_123_456_000, 7, None, 1361442827)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "frame",
    [
        '{"channel":"heartbeat"}',
        '{"channel":"status","data":[{"api_version":"v2","connection_id":13834774380200032777,"system":"online",'
        '"version":"2.0.0"}],"type":"update"}',
        '{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,"symbol":"ALGO/USD"},'
        '"success":true,"time_in":"2023-10-06T17:35:55.219022Z","time_out":"2023-10-06T17:35:55.219067Z"}',
        '{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z","time_out":"2023-09-24T14:10:23.799703Z"}',
        '{"method":"unsubscribe","result":{"channel":"trade","symbol":"BTC/USD"},"success":true}',
        '{"event":"pong","reqid":42}',
        '{"event":"heartbeat"}',
        '{"connectionID":8628615390848610000,"event":"systemStatus","status":"online","version":"1.0.0"}',
        '{"channelID":10001,"channelName":"ticker","event":"subscriptionStatus","pair":"XBT/EUR","status":"subscribed",'
        '"subscription":{"name":"ticker"}}',
    ],
)
def test_protocol_chatter_parses_to_nothing(frame: str) -> None:
    assert parse(frame, EMPTY) == []
    assert SPEC.protocol_chatter == PROTOCOL_CHATTER


@pytest.mark.parametrize(
    ("frame", "channel"),
    [
        ('{"channel":"ohlc","type":"update","data":[{"symbol":"BTC/USD","open":1}]}', "ohlc"),
        ('{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[]}}', "instrument"),
        (
            '[42,["1542057314.748456","1542057360.435743","3586.70000","3586.70000","3586.60000","3586.60000",'
            '"3586.68894","0.03373000",2],"ohlc-5","XBT/USD"]',
            "ohlc-5",
        ),
        ('{"method":"edit_order","success":true,"result":{}}', "edit_order"),
        ('{"event":"somethingNew"}', "somethingNew"),
    ],
)
def test_channels_and_messages_not_normalized_are_reported(frame: str, channel: str) -> None:
    assert_not_normalized(parse, frame, EMPTY, channel, "unhandled")


# --- v1 ticker and spread (Kraken's documented v1 formats) ------------------------------------------------------

V1_TICKER = (
    '[340,{"a":["108172.70000",11,"11.70510914"],"b":["108172.60000",0,"0.01505750"],'
    '"c":["108172.70000","0.00091079"],"v":["6.14876826","162.71709597"],"p":["108216.20347","108148.01677"],'
    '"t":[890,15545],"l":["108157.50000","107829.70000"],"h":["108262.20000","108379.00000"],'
    '"o":["108249.50000","108001.10000"]},"ticker","XBT/USD"]'
)
V1_SPREAD = '[0,["5698.40000","5700.00000","1542057299.545897","1.01234567","0.98765432"],"spread","XBT/USD"]'


def test_v1_ticker_is_a_quote_of_the_best_bid_and_ask_with_their_lot_volumes() -> None:
    # [price, wholeLotVolume, lotVolume]: the lot volume is the size; v1 tickers carry no time: the receipt time
    (quote,) = parse(V1_TICKER, EMPTY)
    assert quote == Quote("kraken", "BTCUSD", D("108172.60000"), D("0.01505750"), D("108172.70000"),
                          D("11.70510914"), 7, 7, None)  # fmt: skip
    digits = (quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty)
    assert tuple(map(str, digits)) == ("108172.60000", "0.01505750", "108172.70000", "11.70510914")


def test_v1_spread_is_a_quote_at_its_own_time() -> None:
    (quote,) = parse(V1_SPREAD, ParseContext(InstrumentRegistry(), 99))
    assert quote == Quote("kraken", "BTCUSD", D("5698.40000"), D("1.01234567"), D("5700.00000"), D("0.98765432"),
                          1_542_057_299_545_897_000, 99, None)  # fmt: skip
    digits = (quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty)
    assert tuple(map(str, digits)) == ("5698.40000", "1.01234567", "5700.00000", "0.98765432")


def test_v1_ticker_and_spread_use_the_listing_for_the_symbol() -> None:
    registry = InstrumentRegistry([Instrument("kraken", "XDG/USD", "DOGE", "USD")])
    spread = V1_SPREAD.replace("XBT/USD", "XDG/USD")
    assert parse(spread, ParseContext(registry, 1))[0].symbol == "DOGEUSD"


def test_a_v1_spread_without_volumes_is_reported_incomplete() -> None:
    old_spread = '[0,["5698.40000","5700.00000","1542057299.545897"],"spread","XBT/USD"]'
    assert_not_normalized(parse, old_spread, EMPTY, "spread", "incomplete")


@pytest.mark.parametrize(
    "frame",
    [
        V1_TICKER.replace('"0.01505750"', '"-0.01505750"'),
        V1_TICKER.replace('"a":["108172.70000",11,"11.70510914"],', ""),
        V1_TICKER.replace('"ticker","XBT/USD"]', '"ticker","XBT/USD",1]'),
        V1_SPREAD.replace('"0.98765432"', '"NaN"'),
        V1_SPREAD.replace('"1542057299.545897"', '"yesterday"'),
        '[0,"x","spread","XBT/USD"]',
    ],
)
def test_bad_v1_tickers_and_spreads_are_parse_errors(frame: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(frame, EMPTY)
    assert not isinstance(caught.value, NotNormalized)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"error":"Currency pair not supported XDG/USD","method":"subscribe","success":false,"symbol":"XDG/USD"}',
         "rejected subscribe: Currency pair not supported XDG/USD"),
        ('{"errorMessage":"Malformed request","event":"subscriptionStatus","status":"error"}', "Malformed request"),
        ('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":1,"qty":1,'
         '"trade_id":1}]}', "kraken trade frame: .*timestamp"),
        ('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"hold","price":1,"qty":1,'
         '"trade_id":1,"timestamp":"2026-07-23T22:56:48Z"}]}', "kraken trade frame"),
        ('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":"NaN","qty":1,'
         '"trade_id":1,"timestamp":"2026-07-23T22:56:48Z"}]}', "positive"),
        ('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":1,"qty":1,'
         '"trade_id":1,"timestamp":"nope"}]}', "timestamp"),
        ('{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":-1,"qty":1}]}]}',
         "non-positive price"),
        ('{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":1,"qty":1E-999999}]}]}',
         "quantity"),
        ('{"channel":"book","type":"delta","data":[]}', "kraken book frame"),
        ('{"channel":"trade","type":"update","data":[{"symbol":"BTCUSD","side":"buy","price":1,"qty":1,'
         '"trade_id":1,"timestamp":"2026-07-23T22:56:48Z"}]}', "BTCUSD"),
        ('[0,{"a":[["1.0","1.0","1.0"]]},"book-10","XBT/USD"]', "checksum"),
        ('[0,[["1.0","1.0","1618678142.557535","x","l",""]],"trade","XBT/USD"]', "malformed"),
        ('[0,[["1.0","1.0","16186781e2","s","l",""]],"trade","XBT/USD"]', "seconds timestamp"),
        ('[0,"trade","XBT/USD"]', "at least 4"),
        ('{"hello":1}', "neither"),
        ("[1,2", "malformed"),
        ("", "malformed"),
        ("[" * 100_000 + "]" * 100_000, "malformed"),
        ('{"channel":"book","type":"update","data":' + "[" * 50_000 + "]" * 50_000 + "}", "malformed"),
    ],
)  # fmt: skip
def test_bad_frames_raise_parse_errors_naming_the_problem(frame: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse(frame, EMPTY)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-09-25T09:04:31.742648Z", 1_695_632_671_742_648_000),
        ("2023-09-25T09:04:31Z", 1_695_632_671_000_000_000),
        ("2023-09-25T09:04:31.7Z", 1_695_632_671_700_000_000),
        ("2023-09-25T09:04:31.123456789Z", 1_695_632_671_123_456_789),
        ("1970-01-01T00:00:00.000001Z", 1_000),
        ("2024-02-29T23:59:59.999999Z", 1_709_251_199_999_999_000),
    ],
)
def test_rfc3339_timestamps_convert_exactly(text: str, ns: int) -> None:
    assert rfc3339_ns(text) == ns
    assert rfc3339_ns(rfc3339(ns)) == ns


@pytest.mark.parametrize(
    "text", ["2023-09-25T09:04:31.742648", "2023-09-25 09:04:31Z", "2023-02-30T09:04:31Z", "2023-09-25T09:04:31.Z",
             "2023-09-25T09:04:31.1234567890Z", "2023-09-25T09:04:61Z", "2023-09-25T09:04:31.74264\uff18Z", ""],
)  # fmt: skip
def test_malformed_rfc3339_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ParseError):
        rfc3339_ns(text)


def test_v1_seconds_timestamps_convert_exactly() -> None:
    assert epoch_text_ns("1618678142.557535") == 1_618_678_142_557_535_000
    assert epoch_text_ns("1618678142") == 1_618_678_142_000_000_000
    assert epoch_text_ns("0.000000001") == 1
    for bad in ("1_000.5", "-1.5", "1.5e3", "1.", "", "1" * 13):
        with pytest.raises(ParseError):
            epoch_text_ns(bad)


# --- subscriptions ----------------------------------------------------------------------------------------------


def test_subscribe_and_unsubscribe_frames() -> None:
    assert SPEC.subscribe(["BTC/USD", "DOGE/USD"], ALL_CHANNELS) == [
        '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USD","DOGE/USD"],"snapshot":false}}',
        '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","DOGE/USD"],"event_trigger":"bbo"}}',
        '{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","DOGE/USD"],"depth":100}}',
    ]
    assert SPEC.unsubscribe(["ETH/BTC"], [Channel.BOOK, Channel.TRADES]) == [
        '{"method":"unsubscribe","params":{"channel":"book","symbol":["ETH/BTC"],"depth":100}}',
        '{"method":"unsubscribe","params":{"channel":"trade","symbol":["ETH/BTC"]}}',
    ]
    assert SPEC.subscribe([], ALL_CHANNELS) == []
    assert get_spec("kraken") is SPEC
    assert (SPEC.ws_url, SPEC.rest_url + SPEC.instruments_path) == (
        "wss://ws.kraken.com/v2",
        "https://api.kraken.com/0/public/AssetPairs",
    )


# --- simulator round trip ---------------------------------------------------------------------------------------

INSTRUMENTS = [
    SimInstrument("BTC", "USD", D("0.1"), D("0.00000001")),
    SimInstrument("DOGE", "EUR", D("0.0000001"), D("0.00000001")),
    SimInstrument("ETH", "BTC", D("0.00001"), D("0.00000001")),
    SimInstrument("ADA", "USDT", D("0.000001"), D("0.00000001")),
]


def test_simulated_listing_round_trips() -> None:
    instruments = parse_instruments(DIALECT.render_instruments(INSTRUMENTS))
    assert [(i.native, i.symbol) for i in instruments] == [
        (DIALECT.native(item), item.base + item.quote) for item in INSTRUMENTS
    ]
    body = json.loads(DIALECT.render_instruments(INSTRUMENTS))
    assert body["result"]["XXBTZUSD"]["wsname"] == "XBT/USD"  # Kraken's REST still spells v1 names
    assert body["result"]["XDGEUR"]["pair_decimals"] == 7


def test_simulated_trades_round_trip() -> None:
    trades = [
        SimTrade(41, D("27123.4"), D("0.01230000"), "buy", 1_700_000_000_123_456_000),
        SimTrade(42, D("27123.3"), D("5"), "sell", 1_700_000_000_123_456_789),  # nanoseconds survive
        SimTrade(44, D("0.0000001"), D("1E+2"), "sell", 1_700_000_001_000_000_000),
    ]
    (frame,) = DIALECT.render_trades("BTC/USD", trades)
    assert '"price":0.0000001' in frame and '"qty":100,' in frame and "E" not in frame.replace("USD", "")
    events = parse(frame, EMPTY)
    assert events == [Trade("kraken", "BTCUSD", str(t.trade_id), t.price, t.qty, t.side, t.ts_ns, 7) for t in trades]
    assert DIALECT.render_trades("BTC/USD", []) == []


def test_simulated_quote_round_trips() -> None:
    quote = SimQuote(D("0.10025"), D("740.0"), D("0.10036"), D("1361.44813783"), 9, 1_695_632_671_742_648_000)
    assert parse(DIALECT.render_quote("ALGO/USD", quote), EMPTY) == [
        Quote("kraken", "ALGOUSD", quote.bid_price, quote.bid_qty, quote.ask_price, quote.ask_qty, quote.ts_ns, 7)
    ]


def _book(bids: list[tuple[str, str]], asks: list[tuple[str, str]], seq: int) -> SimBook:
    return SimBook(
        tuple((D(p), D(q)) for p, q in bids), tuple((D(p), D(q)) for p, q in asks), seq, 1_700_000_000_000_000_000
    )


def test_simulated_books_verify_and_a_skipped_delta_is_caught() -> None:
    bids = [(f"{100 - i}.50", f"{i + 1}.00000000") for i in range(15)]
    asks = [(f"{101 + i}.25", f"0.{i + 1:08d}") for i in range(15)]
    book = _book(bids, asks, 10)
    changes = [
        ([("100.50", "0")], [("101.00", "3.5")]),  # best bid gone, new best ask
        ([("99.75", "2.00000000")], []),
        ([], [("101.25", "0"), ("103.25", "7.10000000")]),
    ]
    deltas = []
    for seq, (bid_changes, ask_changes) in enumerate(changes, 11):
        bid_map = dict(bids) | dict(bid_changes)
        ask_map = dict(asks) | dict(ask_changes)
        bids = sorted(((p, q) for p, q in bid_map.items() if D(q)), key=lambda level: -D(level[0]))
        asks = sorted(((p, q) for p, q in ask_map.items() if D(q)), key=lambda level: D(level[0]))
        after = _book(bids, asks, seq)
        delta_book = _book(bid_changes, ask_changes, seq)
        deltas.append(SimBookDelta(delta_book.bids, delta_book.asks, seq, seq, seq - 1, after.ts_ns + seq, after))

    assert DIALECT.render_book_snapshot is not None
    (snapshot,) = parse(DIALECT.render_book_snapshot("BTC/USD", book), EMPTY)
    assert isinstance(snapshot, BookSnapshot) and snapshot.bids == book.bids and snapshot.asks == book.asks
    events = [one_delta(DIALECT.render_book_delta("BTC/USD", delta)) for delta in deltas]
    assert [(e.bids, e.asks, e.ts) for e in events] == [(d.bids, d.asks, d.ts_ns) for d in deltas]

    sync = new_sync()
    assert [sync.on_snapshot(snapshot), *(sync.on_delta(e) for e in events)] == [BookVerdict.OK] * 4
    assert sync.book.top_text(1) == ([("99.75", "2.00000000")], [("101.00", "3.5")])

    gapped = new_sync()
    gapped.on_snapshot(snapshot)
    assert gapped.on_delta(events[1]) is BookVerdict.CHECKSUM


def test_subscribe_frames_are_understood_by_the_simulator() -> None:
    natives = ["BTC/USD", "DOGE/EUR"]
    for channel in ALL_CHANNELS:
        for build, action in ((SPEC.subscribe, "subscribe"), (SPEC.unsubscribe, "unsubscribe")):
            (frame,) = build(natives, [channel])
            request = DIALECT.parse_client_frame(frame)
            assert request.action == action
            assert request.subscriptions == tuple((channel, native) for native in natives)
            assert len(request.replies) == 2  # one acknowledgement per symbol
            for reply, native in zip(request.replies, natives, strict=True):
                body = json.loads(reply)
                assert (body["method"], body["success"], body["result"]["symbol"]) == (action, True, native)
                assert parse(reply, EMPTY) == []
    (book,) = SPEC.subscribe(["BTC/USD"], [Channel.BOOK])
    assert json.loads(DIALECT.parse_client_frame(book).replies[0])["result"]["depth"] == 100


def test_the_simulator_answers_pings_errors_and_greets() -> None:
    assert SPEC.keepalive_frame is not None
    ping = DIALECT.parse_client_frame(SPEC.keepalive_frame)
    assert ping.action == "ping" and json.loads(ping.replies[0])["method"] == "pong"
    assert parse(ping.replies[0], EMPTY) == []
    with_id = DIALECT.parse_client_frame('{"method":"ping","req_id":101}')
    assert json.loads(with_id.replies[0])["req_id"] == 101

    assert DIALECT.parse_client_frame("[" * 100_000).action == "invalid"
    garbage = DIALECT.parse_client_frame("not json")
    assert garbage.action == "invalid"
    with pytest.raises(ParseError, match="Malformed request"):
        parse(garbage.replies[0], EMPTY)

    v1_name = DIALECT.parse_client_frame('{"method":"subscribe","params":{"channel":"trade","symbol":["XBT/USD"]}}')
    assert v1_name.action == "invalid"
    with pytest.raises(ParseError, match="Currency pair not supported XBT/USD"):
        parse(v1_name.replies[0], EMPTY)
    depth = DIALECT.parse_client_frame(
        '{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":27}}'
    )
    assert depth.action == "invalid" and "Subscription depth not supported" in depth.replies[0]
    mixed = DIALECT.parse_client_frame(
        '{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","XDG/USD"]},"req_id":3}'
    )
    assert mixed.action == "subscribe" and mixed.subscriptions == ((Channel.QUOTES, "BTC/USD"),)
    assert [json.loads(reply)["success"] for reply in mixed.replies] == [True, False]

    assert DIALECT.greeting is not None and parse(DIALECT.greeting, EMPTY) == []
    assert (DIALECT.name, DIALECT.ws_path, DIALECT.rest_book_path) == ("kraken", "/v2", None)


# --- robustness -------------------------------------------------------------------------------------------------


def check(frame: str | bytes) -> None:
    events = parsed_or_refused(parse, frame, EMPTY)
    assert all(isinstance(event, MarketEvent) for event in events or ())


json_values = json_strategy(
    st.text(max_size=8), text_size=None, list_size=5, dict_size=5, max_leaves=20, allow_infinity=False
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REAL_FRAMES = [
    '[993,[["354.04000000","0.28245396","1618678150.826417","s","m",""],'
    '["353.81000000","1.71754604","1618678150.827816","s","m",""]],"trade","XMR/USD"]',
    '[1920,{"a":[["0.042990","364630.28272081","1618678145.920470"]]},'
    '{"b":[["0.042990","0.00000000","1618678145.920708","r"]],"c":"4105471083"},"book-1000","SC/EUR"]',
    '[1360,{"as":[["0.000022900","13355.87450757","1618678123.481570"]],'
    '"bs":[["0.000022890","100.00000000","1618678123.481570"]]},"book-1000","ADA/XBT"]',
    '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":77313.3,"qty":0.0084064,'
    '"ord_type":"limit","trade_id":107612614,"timestamp":"2026-09-13T20:52:59.976634Z"}]}',
    '{"channel":"ticker","type":"update","data":[{"symbol":"ALGO/USD","bid":0.10025,"bid_qty":740.0,"ask":0.10036,'
    '"ask_qty":1361.44813783,"timestamp":"2023-09-25T09:04:31.742648Z"}]}',
    '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":62710.4,"qty":0.01}],'
    '"asks":[{"price":62710.5,"qty":0.93111634}],"checksum":1361442827,"timestamp":"2026-07-09T17:20:01.123456Z"}]}',
    '{"method":"subscribe","result":{"channel":"book","depth":10,"symbol":"ALGO/USD"},"success":true}',
]


@given(st.binary(max_size=200))
@FAST
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    check(data)


@given(json_values)
@FAST
def test_arbitrary_json_never_escapes_as_other_errors(value: Any) -> None:
    check(json.dumps(value))


@given(
    st.sampled_from(["trade", "ticker", "book", "heartbeat", "status", "ohlc", None]),
    st.sampled_from(["snapshot", "update", 1, None]),
    json_values,
)
@FAST
def test_arbitrary_v2_shaped_frames_never_escape(channel: str | None, kind: str | int | None, data: Any) -> None:
    check(json.dumps({"channel": channel, "type": kind, "data": data}))


@given(st.integers(), json_values, st.sampled_from(["trade", "book-10", "book-1000", "ticker", 3]), json_values)
@FAST
def test_arbitrary_v1_shaped_frames_never_escape(channel_id: int, payload: Any, name: str | int, pair: Any) -> None:
    check(json.dumps([channel_id, payload, name, pair]))
    check(json.dumps([channel_id, payload, payload, name, "XBT/USD"]))


def mutate(value: Any, data: st.DataObject) -> Any:
    """Walk into the value and remove or replace one element or field."""
    if isinstance(value, dict | list) and value and data.draw(st.booleans()):
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        key = data.draw(st.sampled_from(keys))
        copy: Any = dict(value) if isinstance(value, dict) else list(value)
        if data.draw(st.booleans()):
            copy[key] = mutate(copy[key], data)
        elif data.draw(st.booleans()):
            del copy[key]
        else:
            copy[key] = data.draw(json_values)
        return copy
    return data.draw(json_values | st.sampled_from(["", "0", "-1", "NaN", "1e400", "2026-13-01T00:00:00Z", "r"]))


@given(st.sampled_from(REAL_FRAMES), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_real_frames_never_escape(frame: str, data: st.DataObject) -> None:
    assert parse(frame, EMPTY) is not None
    check(json.dumps(mutate(json.loads(frame), data)))


def test_real_frames_used_for_mutation_parse() -> None:
    assert [len(parse(frame, EMPTY)) for frame in REAL_FRAMES] == [2, 1, 1, 1, 1, 1, 0]
