"""The chaos run's accounting (bench/chaos_accounting.py) on hand-made journals."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos_accounting import (
    StoredTrade,
    account_trades,
    compare_klines,
    delivered_trades,
    expected_dead_letters,
    reconnected_s,
    repeated_outputs,
    truth_klines,
)
from market_ingestor.simulator.journal import JournalEvent, JournalTrade


def _trade(t: float, session: str, trade_id: str, price: str = "100.0", qty: str = "1") -> JournalTrade:
    ts_ns = 1_700_000_000_000_000_000 + int(t * 1_000_000_000)
    return JournalTrade(t, session.split("-")[0], session, "BTCUSDT", trade_id, price, qty, "buy", ts_ns)


def _stored(session: str, trade_id: str, price: str = "100.0", qty: str = "1") -> StoredTrade:
    return StoredTrade(session.split("-")[0], "BTCUSDT", trade_id, price, qty)


JOURNAL = [
    JournalEvent("O", 0.0, "okx", "okx-1", ""),
    _trade(1.0, "okx-1", "1"),
    _trade(9.5, "okx-1", "2"),  # sent 0.5 s before the drop: in flight
    JournalEvent("M", 9.6, "okx", "okx-1", "truncated"),
    JournalEvent("M", 2.0, "okx", "okx-1", "truncated"),
    JournalEvent("E", 10.0, "okx", "okx-1", "dropped"),
    JournalEvent("O", 11.0, "okx", "okx-2", ""),
    _trade(11.5, "okx-2", "3", "100.10"),
    _trade(12.0, "okx-2", "4"),
    JournalEvent("E", 12.1, "okx", "okx-2", "client_closed"),  # a normal end: nothing in flight
]


def test_everything_owed_stored_once_with_the_sent_text_is_ok_and_in_flight_is_counted_apart():
    stored = [_stored("okx-1", "1"), _stored("okx-2", "3", "100.10"), _stored("okx-2", "4")]
    account = account_trades(JOURNAL, stored, in_flight_s=2.0)
    assert account.ok
    assert (account.sent, account.owed, account.stored, account.in_flight, account.in_flight_stored) == (4, 3, 3, 1, 0)


def test_a_missing_trade_a_changed_text_an_unsent_trade_and_a_duplicate_are_each_reported():
    stored = [
        _stored("okx-1", "1"),
        _stored("okx-1", "1"),  # a duplicate (another ts would get past the unique key)
        _stored("okx-1", "2"),  # in flight, and stored anyway
        _stored("okx-2", "3", "100.1"),  # numerically equal, but not the text sent
        _stored("okx-2", "99"),
    ]
    account = account_trades(JOURNAL, stored, in_flight_s=2.0)
    assert account.lost == [("okx", "BTCUSDT", "4")]
    assert account.changed == [("okx", "BTCUSDT", "3")]
    assert account.never_sent == [("okx", "BTCUSDT", "99")]
    assert (account.duplicated, account.in_flight_stored) == (1, 1)
    assert not account.ok


def test_what_the_client_had_not_read_when_the_exchange_dropped_it_is_in_flight_but_not_what_a_dead_client_read():
    # Trades 1..3 sent 8, 7 and 6 s before their session ended; the client had read only up to trade 1.
    def journal(end: str) -> list[JournalTrade | JournalEvent]:
        trades = [_trade(2.0 + n, "okx-1", str(n)) for n in (1, 2, 3)]
        return [JournalEvent("O", 0.0, "okx", "okx-1", ""), *trades, JournalEvent("E", 11.0, "okx", "okx-1", end)]

    dropped = account_trades(journal("dropped"), [_stored("okx-1", "1")], in_flight_s=2.0)
    assert dropped.ok and (dropped.owed, dropped.in_flight, dropped.unread) == (1, 2, 2)
    # The client died instead: it had read trades 2 and 3 (the connection was not reset under it) and lost them.
    gone = account_trades(journal("client_gone"), [_stored("okx-1", "1")], in_flight_s=2.0)
    assert gone.lost == [("okx", "BTCUSDT", "2"), ("okx", "BTCUSDT", "3")] and gone.unread == 0
    # A stored later trade proves the earlier ones were read: the hole is a loss.
    holed = account_trades(journal("dropped"), [_stored("okx-1", "1"), _stored("okx-1", "3")], in_flight_s=2.0)
    assert holed.lost == [("okx", "BTCUSDT", "2")]


def test_a_trade_sent_on_a_surviving_session_too_is_owed():
    journal = [*JOURNAL, _trade(9.9, "okx-3", "2"), JournalEvent("E", 20.0, "okx", "okx-3", "client_closed")]
    account = account_trades(journal, [_stored("okx-1", "1")], in_flight_s=2.0)
    assert ("okx", "BTCUSDT", "2") in account.lost and account.in_flight == 0


def test_dead_letters_expected_and_reconnection_time():
    read = {("okx", "BTCUSDT", "2")}  # okx-1 was read up to 9.5 s: the frame at 2.0 s was read
    assert expected_dead_letters(JOURNAL, read, in_flight_s=2.0) == (1, 1)
    assert expected_dead_letters(JOURNAL, set(), in_flight_s=2.0) == (0, 2)  # nothing of okx-1 provably read
    assert reconnected_s(JOURNAL, 10.0, ["okx"]) == 1.0
    assert reconnected_s(JOURNAL, 10.0, ["okx", "kraken"]) is None


MINUTE_NS = 60_000_000_000
T0_NS = 1_700_000_040 * 1_000_000_000  # a minute boundary


def _minute_trade(t: float, session: str, trade_id: str, minute: int, price: str, side: str = "buy") -> JournalTrade:
    return JournalTrade(t, "okx", session, "BTCUSDT", trade_id, price, "0.5", side, T0_NS + minute * MINUTE_NS + int(t))


MINUTES = [
    JournalEvent("O", 0.0, "okx", "okx-1", ""),
    _minute_trade(1.0, "okx-1", "1", 0, "100.0"),
    _minute_trade(2.0, "okx-1", "2", 0, "101.5", "sell"),
    _minute_trade(3.0, "okx-1", "3", 1, "99.0"),
    _minute_trade(9.0, "okx-1", "4", 1, "98.0"),  # in flight at the drop
    JournalEvent("E", 10.0, "okx", "okx-1", "dropped"),
    JournalEvent("O", 11.0, "okx", "okx-2", ""),
    _minute_trade(12.0, "okx-2", "5", 2, "97.0"),
    _minute_trade(13.0, "okx-2", "6", 3, "96.0"),
]


def test_the_truth_leaves_out_trades_lost_in_flight_and_keeps_those_stored_anyway():
    stored = {("okx", "BTCUSDT", i) for i in ("1", "2", "3", "5", "6")}
    assert [t.trade_id for t in delivered_trades(MINUTES, stored, in_flight_s=2.0)] == ["1", "2", "3", "5", "6"]
    trades = delivered_trades(MINUTES, stored | {("okx", "BTCUSDT", "4")}, in_flight_s=2.0)
    assert [t.trade_id for t in trades] == ["1", "2", "3", "4", "5", "6"]
    assert (trades[1].side, trades[1].price, trades[1].ts) == ("sell", Decimal("101.5"), T0_NS + 2)


def test_stored_klines_equal_to_the_truth_pass_and_a_changed_or_missing_one_is_reported():
    stored = {("okx", "BTCUSDT", i) for i in ("1", "2", "3", "5", "6")}
    truth = truth_klines(delivered_trades(MINUTES, stored, in_flight_s=2.0), ["1m"])
    first = ("okx", "BTCUSDT", "1m", T0_NS)
    assert truth[first][:4] == (Decimal("100.0"), Decimal("101.5"), Decimal("100.0"), Decimal("101.5"))
    assert truth[first][5:7] == (Decimal("100.75"), 2)  # quote volume, trades
    assert truth[first][7] == Decimal("0.5")  # taker buy volume: the sell is not in it
    assert compare_klines(truth, dict(truth)).ok
    # The last window too: the run waits for the worker to close it.
    last = max(truth)
    assert compare_klines(truth, {k: v for k, v in truth.items() if k != last}).missing == [last]
    changed = {**truth, first: (*truth[first][:4], Decimal("1.5"), *truth[first][5:])}  # another volume
    account = compare_klines(truth, changed)
    assert [key for key, _, _ in account.wrong] == [first] and not account.ok
    second = ("okx", "BTCUSDT", "1m", T0_NS + MINUTE_NS)
    assert compare_klines(truth, {k: v for k, v in truth.items() if k != second}).missing == [second]


def test_a_closed_kline_or_indicator_value_published_twice_with_one_revision_is_repeated() -> None:
    def kline(open_time: int, revision: int = 0, closed: bool = True) -> dict[str, object]:
        return {"type": "kline", "exchange": "okx", "symbol": "BTCUSDT", "interval": "1m", "open_time": open_time,
                "revision": revision, "closed": closed}  # fmt: skip

    def value(name: str, revision: int = 0) -> dict[str, object]:
        return {"type": "indicator", "exchange": "okx", "symbol": "BTCUSDT", "interval": "1m", "name": name,
                "open_time": 60, "revision": revision}  # fmt: skip

    events = [
        kline(0), kline(0, closed=False), kline(0, closed=False),  # in-progress updates repeat by design
        kline(60), kline(60, revision=1),  # a correction is a new revision
        kline(120), kline(120),
        value("rsi_14"), value("rsi_14", revision=1), value("sma_20"), value("sma_20"),
    ]  # fmt: skip
    assert repeated_outputs(events) == [
        ("indicator", "okx", "BTCUSDT", "1m", "sma_20", 60, 0),
        ("kline", "okx", "BTCUSDT", "1m", 120, 0),
    ]
