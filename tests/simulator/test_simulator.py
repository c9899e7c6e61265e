"""The exchange simulator's core against real WebSockets and HTTP on localhost.

A test-only dialect (``TOY``, below) keeps these tests independent of the exchange dialects being written next to
them; the real dialects get a smoke test each, skipped while one is missing or does not read our hand-written
subscribe frame. No sleeps synchronize anything: the tests wait for frames, replies and the simulator's events.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from market_ingestor.cli.simulate import simulate
from market_ingestor.errors import ConfigError
from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator import (
    DIALECTS,
    ClientRequest,
    FaultConfig,
    Market,
    ReplayConfig,
    SimBook,
    SimBookDelta,
    SimDialect,
    SimInstrument,
    SimQuote,
    SimTrade,
    Simulator,
    SimulatorConfig,
    corrupt,
    get_dialect,
    instrument_for,
)

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "exchange-samples"
TIMEOUT_S = 10.0

# --- a test-only dialect: compact JSON, trades batched up to 50 per frame --------------------------------------

_CHANNELS = {"trades": Channel.TRADES, "quotes": Channel.QUOTES, "book": Channel.BOOK}


def _toy_streams(args: Sequence[str]) -> tuple[tuple[Channel, str], ...]:
    return tuple((_CHANNELS[channel], native) for channel, _, native in (arg.partition(":") for arg in args))


def _toy_parse(text: str) -> ClientRequest:
    if text == "ping":
        return ClientRequest("ping", replies=("pong",))
    try:
        frame = json.loads(text)
        action, args = frame["op"], frame["args"]
        subscriptions = _toy_streams(args)
    except (ValueError, KeyError, TypeError):
        return ClientRequest("invalid", replies=(json.dumps({"event": "error", "msg": "bad request"}),))
    if action not in ("subscribe", "unsubscribe"):
        return ClientRequest("invalid", replies=(json.dumps({"event": "error", "msg": f"bad op {action}"}),))
    return ClientRequest(action, subscriptions, (json.dumps({"event": action, "args": args}),))


def _levels(levels: Sequence[tuple[Decimal, Decimal]]) -> list[list[str]]:
    return [[format(price, "f"), format(qty, "f")] for price, qty in levels]


def _toy_trades(native: str, trades: Sequence[SimTrade]) -> list[str]:
    rows = [
        {"id": t.trade_id, "p": format(t.price, "f"), "q": format(t.qty, "f"), "side": t.side, "ts": t.ts_ns}
        for t in trades
    ]
    return [json.dumps({"ch": "trades", "s": native, "data": rows[i : i + 50]}) for i in range(0, len(rows), 50)]


def _toy_quote(native: str, q: SimQuote) -> str:
    return json.dumps({"ch": "quotes", "s": native, "seq": q.seq, "bid": _levels([(q.bid_price, q.bid_qty)])})


def _toy_delta(native: str, d: SimBookDelta) -> str:
    document = {"ch": "book", "type": "delta", "s": native, "U": d.first_seq, "u": d.last_seq, "pu": d.prev_seq}
    return json.dumps(document | {"b": _levels(d.bids), "a": _levels(d.asks)})


def _toy_snapshot(native: str, book: SimBook) -> str:
    document = {"ch": "book", "type": "snapshot", "s": native, "seq": book.seq}
    return json.dumps(document | {"b": _levels(book.bids), "a": _levels(book.asks)})


def _toy_instruments(instruments: Sequence[SimInstrument]) -> bytes:
    rows = [{"id": f"{i.base}-{i.quote}", "tick": str(i.tick), "lot": str(i.lot)} for i in instruments]
    return json.dumps({"symbols": rows}).encode()


def _toy_rest_book(native: str, book: SimBook) -> bytes:
    return json.dumps({"s": native, "seq": book.seq, "b": _levels(book.bids), "a": _levels(book.asks)}).encode()


TOY = SimDialect(
    name="toy",
    ws_path="/ws",
    native=lambda instrument: f"{instrument.base}-{instrument.quote}",
    parse_client_frame=_toy_parse,
    render_trades=_toy_trades,
    render_quote=_toy_quote,
    render_book_delta=_toy_delta,
    render_book_snapshot=_toy_snapshot,
    instruments_path="/api/instruments",
    render_instruments=_toy_instruments,
    rest_book_path="/api/depth",
    render_rest_book=_toy_rest_book,
    rest_book_symbol_param="instId",
    subscriptions_from_query=lambda params: _toy_streams(params["streams"].split("/")) if "streams" in params else (),
    greeting=json.dumps({"event": "hello"}),
)


def toy_sim(**overrides: Any) -> Simulator:
    settings_ = {"port": 0, "exchanges": ("toy",), "symbols": ("BTCUSDT", "ETHUSDT"), "trades_per_s": 2000, "seed": 1}
    return Simulator(SimulatorConfig(**(settings_ | overrides)), dialects={"toy": TOY})


async def recv_text(ws: ClientConnection) -> str:
    async with asyncio.timeout(TIMEOUT_S):
        message = await ws.recv()
    assert isinstance(message, str)
    return message


async def recv_json(ws: ClientConnection) -> Any:
    return json.loads(await recv_text(ws))


async def until(ws: ClientConnection, wanted: dict[str, Any]) -> dict[str, Any]:
    """The next frame containing every key/value of ``wanted``, skipping the others."""
    while True:
        frame = await recv_json(ws)
        if isinstance(frame, dict) and all(frame.get(k) == v for k, v in wanted.items()):
            return frame


async def subscribe(ws: ClientConnection, *streams: str, op: str = "subscribe") -> None:
    await ws.send(json.dumps({"op": op, "args": list(streams)}))
    await until(ws, {"event": op, "args": list(streams)})


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- the market: pure and seeded -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "base", "quote", "tick", "lot"),
    [
        ("BTCUSDT", "BTC", "USDT", "0.1", "0.00001"),
        ("BTCUSD", "BTC", "USD", "0.1", "0.00001"),
        ("ETHUSDC", "ETH", "USDC", "0.01", "0.0001"),
        ("ETHBTC", "ETH", "BTC", "0.0000001", "0.0001"),
        ("XRPEUR", "XRP", "EUR", "0.000001", "1"),
        ("SOLETH", "SOL", "ETH", "0.0000001", "0.001"),
    ],
)
def test_symbols_split_at_a_known_quote_asset_with_tick_and_lot(symbol, base, quote, tick, lot):
    assert instrument_for(symbol) == SimInstrument(base, quote, Decimal(tick), Decimal(lot))
    assert str(instrument_for(symbol).lot) == lot  # never exponent notation such as 1E+1


@pytest.mark.parametrize("symbol", ["btcusdt", "BTC-USDT", "BTCXYZ", "USDT", ""])
def test_symbols_the_simulator_cannot_list_are_refused(symbol):
    with pytest.raises(ConfigError, match="cannot simulate"):
        instrument_for(symbol)


def _on_grid(value: Decimal, step: Decimal) -> bool:
    return value % step == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    symbol=st.sampled_from(["BTCUSDT", "ETHBTC", "XRPEUR", "DOGEUSD"]),
    trades=st.lists(st.integers(0, 400), min_size=1, max_size=30),
)
def test_market_values_stay_on_their_grids_and_deltas_rebuild_the_book(seed, symbol, trades):
    market = Market([symbol], seed=seed, depth=10)
    tick, lot = market.instrument(symbol).tick, market.instrument(symbol).lot
    book = market.book(symbol, 0)
    bids, asks = dict(book.bids), dict(book.asks)
    last_trade_id = None
    for ts, n in enumerate(trades, 1):
        result = market.step(symbol, n, ts)
        assert len(result.trades) == n
        for trade in result.trades:
            assert _on_grid(trade.price, tick) and _on_grid(trade.qty, lot) and trade.qty > 0
            assert last_trade_id is None or trade.trade_id == last_trade_id + 1
            last_trade_id = trade.trade_id
        delta = result.delta
        assert delta.first_seq == delta.last_seq == delta.prev_seq + 1 == book.seq + 1
        for side, changes in ((bids, delta.bids), (asks, delta.asks)):
            for price, qty in changes:
                assert _on_grid(price, tick) and _on_grid(qty, lot)
                if qty == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        book = delta.book
        assert book == market.book(symbol, ts)
        assert (sorted(bids.items(), reverse=True), sorted(asks.items())) == (list(book.bids), list(book.asks))
        assert len(book.bids) == len(book.asks) == 10 and book.bids[0][0] < book.asks[0][0]
        if result.quote is not None:
            quote = result.quote
            assert ((quote.bid_price, quote.bid_qty), (quote.ask_price, quote.ask_qty)) == (book.bids[0], book.asks[0])


def test_the_same_seed_gives_the_same_market_and_another_seed_another():
    def run(seed: int) -> list[Any]:
        market = Market(["BTCUSDT", "ETHUSDT"], seed=seed)
        return [market.step(symbol, n, n) for n in range(1, 30) for symbol in market.symbols]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_gap_skips_trade_ids_and_hides_book_updates_that_change_the_top():
    market = Market(["BTCUSDT"], seed=3, depth=10)
    before = market.step("BTCUSDT", 2, 1)
    market.inject_gap("BTCUSDT", updates=2)
    after = market.step("BTCUSDT", 1, 2)
    assert after.trades[0].trade_id == before.trades[-1].trade_id + 3
    assert after.delta.first_seq == before.delta.last_seq + 3
    assert after.delta.prev_seq == after.delta.first_seq - 1  # it follows an update the client never saw
    # What the client would build from the deltas it got differs from the book: a checksum catches it too.
    bids, asks = dict(before.delta.book.bids), dict(before.delta.book.asks)
    bids.update(after.delta.bids)
    asks.update(after.delta.asks)
    client_bids = sorted(((p, q) for p, q in bids.items() if q), reverse=True)
    client_asks = sorted((p, q) for p, q in asks.items() if q)
    assert client_bids[:10] != list(after.delta.book.bids) and client_asks[:10] != list(after.delta.book.asks)


def test_a_broken_copy_is_either_not_json_or_json_with_wrong_types():
    frame = '{"ch":"trades","s":"BTC-USDT","data":[{"id":5,"p":"60000.1","q":"0.001","side":"buy","m":true}]}'
    with pytest.raises(ValueError):
        json.loads(corrupt(frame, "truncated"))
    broken = json.loads(corrupt(frame, "wrong_types"))
    assert broken["ch"] == "trades" and broken["s"] == "BTC-USDT"  # still routed to the trade parser
    assert broken["data"][0] == {
        "id": "not-a-number",
        "p": {"unexpected": "60000.1"},
        "q": {"unexpected": "0.001"},
        "side": "buy",
        "m": "maybe",
    }
    assert json.loads(corrupt('{"event":"x"}', "wrong_types")) == [{"event": "x"}]


# --- subscriptions and streaming -------------------------------------------------------------------------------


def _is_toy_data(frame: Any) -> bool:
    return isinstance(frame, dict) and frame.get("ch") in _CHANNELS


async def test_frames_arrive_for_exactly_the_subscribed_channel_and_symbol():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        assert await recv_json(ws) == {"event": "hello"}
        await subscribe(ws, "trades:BTC-USDT", "book:ETH-USDT")
        snapshot = await until(ws, {"ch": "book"})
        assert snapshot["type"] == "snapshot" and snapshot["s"] == "ETH-USDT"
        seen: set[tuple[str, str]] = set()
        book_seq = snapshot["seq"]
        while len(seen) < 2 or sim.stats("toy").book_updates < 40:
            frame = await recv_json(ws)
            seen.add((frame["ch"], frame["s"]))
            if frame["ch"] == "book":
                assert frame["U"] == book_seq + 1  # deltas continue right after the snapshot
                book_seq = frame["u"]
        assert seen == {("trades", "BTC-USDT"), ("book", "ETH-USDT")}
        stats = sim.stats("toy")
        assert (stats.sessions_current, stats.subscriptions, stats.client_frames) == (1, 2, 1)


async def test_unsubscribing_stops_the_stream():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "trades:BTC-USDT", "trades:ETH-USDT")
        await until(ws, {"ch": "trades", "s": "BTC-USDT"})
        await subscribe(ws, "trades:BTC-USDT", op="unsubscribe")  # frames queued before the reply may still come
        symbols = [(await until(ws, {"ch": "trades"}))["s"] for _ in range(20)]
        assert set(symbols) == {"ETH-USDT"}
        assert sim.stats("toy").subscriptions == 1


async def test_subscriptions_in_the_url_query_and_a_keepalive_reply():
    async with toy_sim() as sim, connect(sim.ws_url("toy") + "?streams=quotes:BTC-USDT/book:BTC-USDT") as ws:
        await sim.wait_subscribed("toy", Channel.QUOTES, "BTCUSDT", timeout_s=TIMEOUT_S)
        await sim.wait_subscribed("toy", Channel.BOOK, "btc-usdt", timeout_s=TIMEOUT_S)  # native, any case
        assert (await until(ws, {"ch": "book"}))["type"] == "snapshot"
        assert (await until(ws, {"ch": "quotes"}))["s"] == "BTC-USDT"
        await ws.send("ping")
        while (text := await recv_text(ws)) != "pong":
            assert _is_toy_data(json.loads(text))


async def test_sessions_subscribed_to_one_stream_share_the_same_frames():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as first, connect(sim.ws_url("toy")) as second:
        await subscribe(first, "trades:BTC-USDT")
        await subscribe(second, "trades:BTC-USDT")
        frame = await until(second, {"ch": "trades"})
        while (await until(first, {"ch": "trades"})) != frame:
            pass
        assert [await until(first, {"ch": "trades"}) for _ in range(3)] == [
            await until(second, {"ch": "trades"}) for _ in range(3)
        ]


async def test_sent_trades_count_exactly_what_a_client_received():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "trades:ETH-USDT")
        count, qty = 0, Decimal(0)
        while count < 200:
            frame = await until(ws, {"ch": "trades"})
            count += len(frame["data"])
            qty += sum(Decimal(row["q"]) for row in frame["data"])
        await ws.send(json.dumps({"op": "unsubscribe", "args": ["trades:ETH-USDT"]}))
        while (frame := await recv_json(ws)).get("event") != "unsubscribe":
            count += len(frame["data"])
            qty += sum(Decimal(row["q"]) for row in frame["data"])
        sent = sim.sent_trades("toy", "ETHUSDT")
        assert (sent.count, sent.qty) == (count, qty)


async def test_bad_client_frames_get_the_dialects_error_and_are_counted():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        await ws.send("{not json")
        assert await until(ws, {"event": "error"}) == {"event": "error", "msg": "bad request"}
        assert sim.stats("toy").invalid_client_frames == 1


# --- REST and routing ----------------------------------------------------------------------------------------


async def test_rest_serves_the_listing_and_the_depth_snapshot_and_json_errors():
    async with toy_sim(book_depth=7) as sim:
        base = sim.rest_url("toy")
        status, listing = await asyncio.to_thread(http_get, f"{base}/api/instruments")
        assert status == 200
        assert listing["symbols"][0] == {"id": "BTC-USDT", "tick": "0.1", "lot": "0.00001"}
        status, depth = await asyncio.to_thread(http_get, f"{base}/api/depth?instId=ETH-USDT&limit=5")
        assert status == 200 and depth["s"] == "ETH-USDT" and len(depth["b"]) == len(depth["a"]) == 7
        assert Decimal(depth["b"][0][0]) < Decimal(depth["a"][0][0])
        for path, code in [
            ("/toy/api/depth?instId=NOPE-USDT", 400),
            ("/toy/api/nothing", 404),
            ("/nowhere/api/instruments", 404),
        ]:
            status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{sim.port}{path}")
            assert status == code and "error" in body
        assert sim.stats("toy").rest_requests == 4


async def test_a_websocket_on_another_path_is_refused():
    async with toy_sim() as sim:
        with pytest.raises(InvalidStatus) as refused:
            await connect(sim.rest_url("toy").replace("http", "ws") + "/elsewhere")
        assert refused.value.response.status_code == 404


# --- faults ----------------------------------------------------------------------------------------------------


async def test_drop_aborts_the_connection_without_a_close_frame_and_reconnects_work():
    async with toy_sim() as sim:
        async with connect(sim.ws_url("toy")) as ws:
            await subscribe(ws, "trades:BTC-USDT")
            assert await sim.drop_connections("toy") == 1
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    await recv_text(ws)
            assert closed.value.rcvd is None
        assert sim.stats("toy").sessions_current == 0 and sim.stats("toy").drops == 1
        async with connect(sim.ws_url("toy")) as ws:
            assert await recv_json(ws) == {"event": "hello"}


async def test_a_stall_sends_nothing_while_the_socket_stays_open():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "trades:BTC-USDT")
        received = 2  # the greeting and the reply
        last_id = (await until(ws, {"ch": "trades"}))["data"][-1]["id"]
        received += 1
        assert sim.stall("toy") == 1
        written = sim.stats("toy").frames_sent
        await sim.wait_stats("toy", lambda s: s.frames_discarded >= 10, timeout_s=TIMEOUT_S)
        assert sim.stats("toy").frames_sent == written
        pong = await ws.ping()  # answered: the connection is alive
        async with asyncio.timeout(TIMEOUT_S):
            await pong
        sim.unstall("toy")
        while received < written:  # what was written before the stall...
            last_id = (await recv_json(ws))["data"][-1]["id"]
            received += 1
        first_after = (await recv_json(ws))["data"][0]["id"]  # ...then the stream resumes past the lost trades
        assert first_after > last_id + 10


async def test_malformed_frames_are_extra_broken_copies_and_the_data_stays_complete():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "trades:BTC-USDT")
        await until(ws, {"ch": "trades"})
        sim.inject_malformed("toy", count=2)
        broken, ids = [], []
        while len(broken) < 2 or len(ids) < 300:
            text = await recv_text(ws)
            try:
                frame = json.loads(text)
            except ValueError:
                broken.append("truncated")
                continue
            if not all(isinstance(row["id"], int) for row in frame["data"]):
                assert all(row["p"] == {"unexpected": row["p"]["unexpected"]} for row in frame["data"])
                broken.append("wrong_types")
                continue
            ids += [row["id"] for row in frame["data"]]
        assert sorted(broken) == ["truncated", "wrong_types"]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert sim.stats("toy").malformed_sent == 2


async def test_a_gap_skips_trade_ids_and_book_sequence_numbers():
    async with toy_sim() as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "trades:BTC-USDT", "book:BTC-USDT")
        last = {"book": (await until(ws, {"ch": "book", "type": "snapshot"}))["seq"]}
        jumps: dict[str, int] = {}
        injected = False
        async with asyncio.timeout(TIMEOUT_S):
            while len(jumps) < 2:
                frame = await recv_json(ws)
                channel = frame["ch"]
                first, end = (
                    (frame["U"], frame["u"]) if channel == "book" else (frame["data"][0]["id"], frame["data"][-1]["id"])
                )
                if channel in last and first != last[channel] + 1:
                    jumps[channel] = first - last[channel]
                    assert channel == "trades" or frame["pu"] == frame["U"] - 1
                last[channel] = end
                if len(last) == 2 and not injected:
                    sim.inject_gap("toy", "BTCUSDT", updates=2)  # both streams seen: the next update skips
                    injected = True
        assert jumps == {"book": 3, "trades": 3}


async def test_slow_sends_pace_every_frame_and_never_close_the_session():
    # A tiny outbox: without the fault's backpressure the session would be closed as a slow consumer at once.
    async with toy_sim(session_queue_frames=3) as sim, connect(sim.ws_url("toy")) as ws:
        await recv_json(ws)
        sim.slow_sends("toy", 20)
        began = time.monotonic()
        await subscribe(ws, "trades:BTC-USDT", "book:BTC-USDT", "quotes:BTC-USDT")
        frames = [await recv_json(ws) for _ in range(10)]
        assert time.monotonic() - began >= 10 * 0.020  # the reply and ten frames each waited 20 ms
        sim.slow_sends("toy", 0)
        ids = [row["id"] for frame in frames if frame["ch"] == "trades" for row in frame["data"]]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert sim.stats("toy").slow_consumers == 0


async def test_a_client_that_stops_reading_is_closed_with_1008():
    async with (
        toy_sim(session_queue_frames=20, trades_per_s=50_000) as sim,
        connect(sim.ws_url("toy"), max_queue=1) as ws,
    ):
        await ws.send(json.dumps({"op": "subscribe", "args": [f"{c}:{s}" for c in _CHANNELS for s in ("BTC-USDT",)]}))
        await sim.wait_stats("toy", lambda s: s.slow_consumers == 1, timeout_s=30)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await recv_text(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize(
    ("faults", "check"),
    [
        (FaultConfig(malformed_every=3), lambda s: s.malformed_sent >= 2),
        (FaultConfig(drop_every_s=0.05), lambda s: s.drops >= 1),
        (FaultConfig(stall_every_s=0.05, stall_s=60), lambda s: s.stalls >= 1 and s.frames_discarded >= 1),
    ],
    ids=["malformed_every", "drop_every_s", "stall_every_s"],
)
async def test_configured_faults_recur_on_their_own(faults, check):
    async with toy_sim(faults=faults) as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "trades:BTC-USDT", "book:BTC-USDT")
        await sim.wait_stats("toy", check, timeout_s=TIMEOUT_S)


async def test_configured_gaps_recur_every_n_updates():
    async with toy_sim(faults=FaultConfig(gap_every=3)) as sim, connect(sim.ws_url("toy")) as ws:
        await subscribe(ws, "book:BTC-USDT")
        last = (await until(ws, {"ch": "book"}))["seq"]
        gaps = 0
        while gaps < 2:
            frame = await until(ws, {"ch": "book"})
            gaps += frame["U"] != last + 1
            last = frame["u"]


# --- replay ----------------------------------------------------------------------------------------------------

needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no recorded sessions at {SAMPLES}")


@needs_samples
@pytest.mark.parametrize("speed", [None, 100.0])
async def test_replay_sends_the_recorded_frames_in_order_and_serves_recorded_rest(speed):
    from market_ingestor.ingestor.capture import received_frames, rest_bodies

    files = (SAMPLES / "KRAKEN.ws.48.0", SAMPLES / "KRAKEN.0")
    expected = [record.payload for record in received_frames(files[0])]
    replay = ReplayConfig("kraken", files, speed)
    config = SimulatorConfig(port=0, exchanges=("kraken", "toy"), replay=replay)
    async with Simulator(config, dialects={"toy": TOY, "kraken": TOY}) as sim:
        async with connect(sim.ws_url("kraken")) as ws:
            await ws.send(json.dumps({"op": "subscribe", "args": ["trades:XBT/USD"]}))  # ignored: it is a replay
            assert [await recv_text(ws) for _ in expected] == expected
        status, body = await asyncio.to_thread(http_get, f"{sim.rest_url('kraken')}/0/public/AssetPairs")
        assert status == 200 and body == json.loads(next(rest_bodies(files[1])).payload)
        async with connect(sim.ws_url("toy")) as ws:  # the other exchanges keep their market
            assert await recv_json(ws) == {"event": "hello"}


# --- the real dialects: a smoke test each ---------------------------------------------------------------------

# Each exchange's documented subscribe frame for BTC/USDT trades, written by hand (not the connectors' code).
HAND_WRITTEN_SUBSCRIBE = {
    "binance": '{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}',
    "okx": '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}',
    "bybit": '{"op":"subscribe","args":["publicTrade.BTCUSDT"]}',
    "coinbase": '{"type":"subscribe","product_ids":["BTC-USDT"],"channels":["matches"]}',
    "kraken": '{"method":"subscribe","params":{"channel":"trade","symbol":["BTC/USDT"]}}',
}


@pytest.mark.parametrize("exchange", sorted(DIALECTS))
async def test_each_real_dialect_lists_instruments_and_streams_trades(exchange):
    if importlib.util.find_spec(DIALECTS[exchange]) is None:
        pytest.skip(f"the {exchange} dialect is not written yet")
    dialect = get_dialect(exchange)
    request = dialect.parse_client_frame(HAND_WRITTEN_SUBSCRIBE[exchange])
    if request.action != "subscribe" or Channel.TRADES not in {channel for channel, _ in request.subscriptions}:
        pytest.skip(f"the {exchange} dialect does not read our hand-written subscribe frame: {request}")
    config = SimulatorConfig(port=0, exchanges=(exchange,), symbols=("BTCUSDT",), trades_per_s=500, seed=2)
    async with Simulator(config) as sim:
        status, _ = await asyncio.to_thread(http_get, sim.rest_url(exchange) + dialect.instruments_path)
        assert status == 200
        async with connect(sim.ws_url(exchange)) as ws:
            await ws.send(HAND_WRITTEN_SUBSCRIBE[exchange])
            await sim.wait_subscribed(exchange, Channel.TRADES, "BTCUSDT", timeout_s=TIMEOUT_S)
            await sim.wait_stats(exchange, lambda s: s.frames_sent >= 5, timeout_s=TIMEOUT_S)
        assert sim.sent_trades(exchange, "BTCUSDT").count > 0


# --- the command ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", str(Path(__file__))], "--replay and --exchange go together"),
        (["--symbols", "BTC-USDT"], "cannot simulate 'BTC-USDT'"),
        (["--drop-every-s", "0"], "faults.drop_every_s must be positive"),
    ],
)
def test_bad_options_are_refused_before_anything_listens(args, message):
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2
    assert message in result.output


def test_the_command_prints_the_urls_to_configure_and_exits_0_on_sigint():
    command = "from market_ingestor.cli.simulate import simulate; simulate()"
    args = [sys.executable, "-c", command, "--port", "0", "--exchanges", "binance", "--log-level", "WARNING"]
    if importlib.util.find_spec(DIALECTS["binance"]) is None:
        pytest.skip("the binance dialect is not written yet")
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT_S) == 0
    assert lines[1] == "[exchanges.binance]\n"
    assert lines[2].startswith('ws_url = "ws://127.0.0.1:') and lines[2].endswith('/binance/stream"\n')
    assert lines[4] == 'symbols = ["BTCUSDT", "ETHUSDT"]\n'
