"""The kline state machine: hand-computed klines, lateness, gaps, wall-clock closing, restarts, throttling,
idempotence, and properties against a brute-force recomputation."""

from __future__ import annotations

import random
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from decimal import Context, Decimal, getcontext, localcontext

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import ConfigError, MarketIngestorError
from market_ingestor.model import Kline, Trade
from market_ingestor.streams.klines import (
    Applied,
    InstrumentKlines,
    KlineSettings,
    aggregate,
    exact_context,
)
from market_ingestor.validity import trade_problem
from market_ingestor.windows import MINUTE_NS, SECOND_NS

MS = 1_000_000
T0 = 1_709_208_000 * SECOND_NS  # 2024-02-29 12:00:00 UTC
S_1M_5M = KlineSettings(intervals=("1m", "5m"), grace_ms=2000, max_lateness_ms=600_000, update_interval_ms=250)
D = Decimal


def trade(tid: str | int, ts: int, price: str, qty: str, side: str = "buy", symbol: str = "BTCUSDT") -> Trade:
    return Trade("binance", symbol, str(tid), D(price), D(qty), side, ts, ts)  # type: ignore[arg-type]


def at(minutes: float, ns: int = 0) -> int:
    """T0 + minutes (+ ns): readable timestamps."""
    return T0 + round(minutes * MINUTE_NS) + ns


def new(settings: KlineSettings = S_1M_5M) -> InstrumentKlines:
    return InstrumentKlines.new("binance", "BTCUSDT", settings)


def by_interval(klines: Iterable[Kline], interval: str) -> list[Kline]:
    return [k for k in klines if k.interval == interval]


# --- a brute-force reference: group by window, stable-sort by ts, fill gaps ------------------------------------


def brute_force(trades: Sequence[Trade], settings: KlineSettings) -> list[Kline]:
    out: list[Kline] = []
    instruments: dict[tuple[str, str], list[Trade]] = defaultdict(list)
    for t in trades:
        instruments[(t.exchange, t.symbol)].append(t)
    with localcontext(Context(prec=500)):
        for (exchange, symbol), mine in instruments.items():
            for interval in settings.parsed_intervals():
                windows: dict[int, list[Trade]] = defaultdict(list)
                for t in sorted(mine, key=lambda t: t.ts):  # stable: arrival order among equal ts
                    windows[interval.open_time(t.ts)].append(t)
                close = None
                for start in range(min(windows), max(windows) + 1, interval.ns):
                    ts = windows.get(start, [])
                    buys = [t for t in ts if t.side == "buy"]
                    volume = sum((t.qty for t in ts), D(0))
                    quote = sum((t.price * t.qty for t in ts), D(0))
                    close = ts[-1].price if ts else close
                    assert close is not None
                    out.append(
                        Kline(
                            exchange, symbol, interval.name, start, start + interval.ns - 1,
                            open=ts[0].price if ts else close,
                            high=max(t.price for t in ts) if ts else close,
                            low=min(t.price for t in ts) if ts else close,
                            close=close, volume=volume, quote_volume=quote, trade_count=len(ts),
                            taker_buy_volume=sum((t.qty for t in buys), D(0)),
                            taker_buy_quote_volume=sum((t.price * t.qty for t in buys), D(0)),
                            first_trade_id=ts[0].trade_id if ts else None,
                            last_trade_id=ts[-1].trade_id if ts else None,
                            vwap=Context(prec=34).divide(quote, volume) if volume else close,
                            closed=True,
                        )
                    )  # fmt: skip
    return out


def canonical(klines: Iterable[Kline]) -> list[Kline]:
    return sorted(klines, key=lambda k: (k.exchange, k.symbol, k.interval, k.open_time, k.revision))


def final_revisions(klines: Iterable[Kline]) -> list[Kline]:
    """The last revision of each kline, its revision number cleared (to compare with brute force)."""
    last: dict[tuple[str, str, str, int], Kline] = {}
    for k in klines:
        key = (k.exchange, k.symbol, k.interval, k.open_time)
        assert key not in last or k.revision == last[key].revision + 1, "revisions grow by one"
        last[key] = k
    return canonical(msgspec.structs.replace(k, revision=0) for k in last.values())


# --- hand-computed klines ----------------------------------------------------------------------------------------


def test_kline_fields_on_a_hand_computed_window() -> None:
    state = new()
    trades = [
        trade(1, at(0, 1 * SECOND_NS), "100.10", "0.5", "buy"),
        trade(2, at(0, 20 * SECOND_NS), "100.30", "1.25", "sell"),
        trade(3, at(0, 40 * SECOND_NS), "99.90", "2", "buy"),
        trade(4, at(1) - 1, "100.00", "0.25", "sell"),  # the window's last nanosecond
    ]
    assert all(state.apply(t) == Applied() for t in trades)
    # The window closes once the watermark passes close_time + grace, not a nanosecond earlier.
    assert state.apply(trade(5, at(1) - 1 + 2000 * MS, "101", "1")).klines == ()
    closed = state.apply(trade(6, at(1) + 2000 * MS, "101", "1")).klines
    assert closed == (
        Kline(
            "binance", "BTCUSDT", "1m", at(0), at(1) - 1,
            open=D("100.10"), high=D("100.30"), low=D("99.90"), close=D("100.00"),
            volume=D("4.00"), quote_volume=D("400.2250"), trade_count=4,
            taker_buy_volume=D("2.5"), taker_buy_quote_volume=D("249.850"),
            first_trade_id="1", last_trade_id="4", vwap=D("100.05625"), closed=True, revision=0,
        ),
    )  # fmt: skip
    # Exact to the last digit, in the exchange's own notation.
    assert (str(closed[0].quote_volume), str(closed[0].vwap), str(closed[0].volume)) == (
        "400.2250",
        "100.05625",
        "4.00",
    )


def test_vwap_is_rounded_half_even_to_34_significant_digits() -> None:
    state = new()
    state.apply(trade(1, at(0), "1", "1"))
    state.apply(trade(2, at(0.5), "2", "2"))
    (kline,) = by_interval(state.flush(), "1m")
    assert (kline.quote_volume, kline.volume) == (D(5), D(3))
    assert str(kline.vwap) == "1.666666666666666666666666666666667"


def test_sums_are_exact_beyond_the_default_28_digits_whatever_the_callers_context() -> None:
    price, qty = "123456789.123456789", "987654321.987654321"
    with localcontext(Context(prec=5)):  # a caller's context must neither round our sums nor be changed by us
        state = new()
        state.apply(trade(1, at(0), price, qty))
        state.apply(trade(2, at(0.1), price, qty, "sell"))
        klines = state.flush()
        assert getcontext().prec == 5
    product = D(f"{123456789123456789 * 987654321987654321}E-18")  # integer arithmetic: exact, 36 digits
    assert str(product) == "121932631356500531.347203169112635269"
    one = by_interval(klines, "1m")[0]
    assert one.taker_buy_quote_volume == product
    assert str(one.quote_volume) == "243865262713001062.694406338225270538"
    assert str(one.volume) == "1975308643.975308642"


def test_open_close_and_ids_follow_event_time_with_arrival_breaking_ties() -> None:
    state = new()
    state.apply(trade("b", at(0.5), "20", "1"))
    state.apply(trade("a", at(0.2), "10", "1"))  # earlier ts, later arrival: it opens the window
    state.apply(trade("c", at(0.5), "30", "1"))  # same ts as "b", applied later: it closes the window
    state.apply(trade("d", at(0.3), "40", "1"))
    (kline,) = by_interval(state.flush(), "1m")
    assert (kline.open, kline.close, kline.high, kline.low) == (D(10), D(30), D(40), D(10))
    assert (kline.first_trade_id, kline.last_trade_id) == ("a", "c")


# --- out of order, late, too late --------------------------------------------------------------------------------


def test_an_out_of_order_trade_within_grace_lands_in_its_window() -> None:
    state = new()
    state.apply(trade(1, at(0.5), "100", "1"))
    state.apply(trade(2, at(1, 1500 * MS), "105", "1"))  # next window; the 12:00 one is in its grace period
    assert state.apply(trade(3, at(1) - 1, "90", "2")) == Applied()  # not late
    (kline,) = state.apply(trade(4, at(1, 2001 * MS), "106", "1")).klines
    assert (kline.open_time, kline.trade_count, kline.volume, kline.low, kline.close) == (at(0), 2, D(3), D(90), D(90))
    assert kline.last_trade_id == "3" and kline.revision == 0


def test_a_late_trade_corrects_the_closed_kline_with_the_next_revision() -> None:
    state = new()
    state.apply(trade(1, at(0.25), "100", "1"))
    (first,) = state.apply(trade(2, at(1.5), "101", "1")).klines
    applied = state.apply(trade(3, at(0.5), "120", "0.5", "sell"))
    assert applied.late and not applied.too_late
    (corrected,) = applied.klines  # the 5m window is still open: only the 1m kline is corrected
    assert corrected == msgspec.structs.replace(
        first, high=D(120), close=D(120), volume=D("1.5"), quote_volume=D(160), trade_count=2,
        last_trade_id="3", vwap=Context(prec=34).divide(D(160), D("1.5")), revision=1,
    )  # fmt: skip
    # a second late trade: revision 2; the 5m kline includes every trade exactly once
    assert state.apply(trade(4, at(0.75), "99", "1")).klines[0].revision == 2
    five = by_interval(state.flush(), "5m")
    assert [(k.trade_count, k.volume, k.revision) for k in five] == [(4, D("3.5"), 0)]


def test_a_late_trade_in_a_gap_turns_the_flat_kline_real_and_corrects_the_flat_ones_after_it() -> None:
    state = new()
    state.apply(trade(1, at(0.1), "100", "1"))
    closed = state.apply(trade(2, at(3.1), "105", "1")).klines
    assert [(k.open_time, k.trade_count, k.close) for k in by_interval(closed, "1m")] == [
        (at(0), 1, D(100)), (at(1), 0, D(100)), (at(2), 0, D(100)),
    ]  # fmt: skip
    applied = state.apply(trade(3, at(1.5), "101", "2"))
    assert applied.late
    assert [(k.open_time, k.revision, k.trade_count, k.open, k.close, k.vwap) for k in applied.klines] == [
        (at(1), 1, 1, D(101), D(101), D(101)),
        (at(2), 1, 0, D(101), D(101), D(101)),  # the flat one carried the old close forward
    ]


def test_a_late_trade_before_the_first_one_extends_the_series_back() -> None:
    state = new()
    state.apply(trade(1, at(5.1), "100", "1"))
    applied = state.apply(trade(2, at(2.5), "90", "1"))  # windows 12:02..12:04 are over: 2:30 min behind
    assert applied.late
    assert [(k.interval, k.open_time, k.trade_count, k.close, k.revision) for k in applied.klines] == [
        ("1m", at(2), 1, D(90), 0), ("1m", at(3), 0, D(90), 0), ("1m", at(4), 0, D(90), 0),
        ("5m", at(0), 1, D(90), 0),
    ]  # fmt: skip
    assert [(k.open_time, k.open) for k in by_interval(state.flush(), "1m")] == [(at(5), D(100))]


def test_each_interval_closes_exactly_past_its_own_end_plus_grace() -> None:
    state = new()
    state.apply(trade(1, at(0, 10 * SECOND_NS), "100", "1"))
    # the watermark lands exactly on close_time + grace of the 12:04 minute and of the 12:00 five minutes:
    # neither closes, every earlier minute does
    closed = state.apply(trade(2, at(5) + 2000 * MS - 1, "101", "1")).klines
    assert [(k.interval, k.open_time) for k in closed] == [("1m", at(m)) for m in range(4)]
    applied = state.apply(trade(3, at(3.5), "99", "2"))  # late for its minute, in time for its five minutes
    assert applied.late
    assert [(k.interval, k.open_time, k.revision, k.close) for k in applied.klines] == [("1m", at(3), 1, D(99))]
    closed = state.apply(trade(4, at(5) + 2000 * MS, "101", "1")).klines
    assert [(k.interval, k.open_time, k.trade_count, k.low, k.volume, k.revision) for k in closed] == [
        ("1m", at(4), 0, D(99), D(0), 0), ("5m", at(0), 2, D(99), D(3), 0),
    ]  # fmt: skip


def test_a_late_trade_before_the_first_one_leaves_windows_in_their_grace_period_open() -> None:
    state = new()
    state.apply(trade(1, at(2, 500 * MS), "100", "1"))
    applied = state.apply(trade(2, at(0.5), "90", "1"))  # its minute is over; 12:01 is still in its grace period
    assert applied.late
    assert [(k.interval, k.open_time, k.trade_count) for k in applied.klines] == [("1m", at(0), 1)]
    later = state.apply(trade(3, at(2, 2000 * MS), "101", "1")).klines  # now past 12:01's close + grace
    assert [(k.interval, k.open_time, k.trade_count, k.close) for k in later] == [("1m", at(1), 0, D(90))]
    assert [(k.open_time, k.trade_count, k.open) for k in by_interval(state.flush(), "5m")] == [(at(0), 3, D(90))]


def test_a_trade_beyond_the_correction_horizon_is_too_late_and_changes_nothing() -> None:
    state = new()
    state.apply(trade(1, at(0), "100", "1"))
    state.apply(trade(2, at(20) - 1, "100", "1"))  # watermark 12:19:59.999999999
    before = state.to_bytes()
    # The 12:09 minute's close_time (12:09:59.999999999) + 10 min is the watermark itself: still correctable...
    applied = state.apply(trade(3, at(9), "1", "1"))
    assert applied.late and not applied.too_late and applied.klines[0].open_time == at(9)
    # ...a trade in the 12:08 minute is one nanosecond further behind: too late, applied to no interval at all
    state = InstrumentKlines.from_bytes(before, S_1M_5M)
    applied = state.apply(trade(4, at(9) - 1, "1", "1"))
    assert applied.too_late and applied.klines == () and not applied.late
    assert applied.reason is not None and "max_lateness_ms=600000" in applied.reason and "12:09:00" in applied.reason
    assert state.to_bytes() == before


def test_a_late_trade_is_in_every_interval_or_in_none() -> None:
    state = new(KlineSettings(intervals=("1m", "1h"), max_lateness_ms=60_000))
    state.apply(trade(1, at(0), "100", "1"))
    state.apply(trade(2, at(3), "100", "1"))
    # too late for its minute (ended 2 min before the watermark), while its hour is open: rejected everywhere
    assert state.apply(trade(3, at(0.5), "1", "1")).too_late
    hour = by_interval(state.flush(), "1h")
    assert [(k.trade_count, k.low) for k in hour] == [(2, D(100))]


def test_aggregate_raises_on_a_too_late_trade_unless_told_where_to_route_it() -> None:
    trades = [trade(1, at(0), "1", "1"), trade(2, at(30), "1", "1"), trade(3, at(1), "1", "1")]
    with pytest.raises(ValueError, match="too late"):
        list(aggregate(trades, S_1M_5M))
    rejected: list[tuple[str, str]] = []
    klines = list(aggregate(trades, S_1M_5M, on_too_late=lambda t, reason: rejected.append((t.trade_id, reason))))
    assert [tid for tid, _ in rejected] == ["3"]
    assert sum(k.trade_count for k in by_interval(klines, "1m")) == 2


def test_after_flush_every_trade_is_too_late() -> None:
    state = new()
    state.apply(trade(1, at(0), "1", "1"))
    state.flush()
    applied = state.apply(trade(2, at(0.5), "1", "1"))
    assert applied.too_late and applied.reason is not None and "end of input" in applied.reason


# --- gaps ------------------------------------------------------------------------------------------------------


def test_flat_klines_fill_gaps_between_trades_but_not_before_the_first_or_after_the_last() -> None:
    state = new()
    klines = [*state.apply(trade(1, at(0.1), "100", "1")).klines]
    klines += state.apply(trade(2, at(0.2), "100.5", "1", "sell")).klines
    klines += state.apply(trade(3, at(3.1), "105", "2")).klines
    klines += state.flush()
    ones = by_interval(klines, "1m")
    assert [k.open_time for k in ones] == [at(0), at(1), at(2), at(3)]
    flat = Kline(
        "binance", "BTCUSDT", "1m", at(1), at(2) - 1, open=D("100.5"), high=D("100.5"), low=D("100.5"),
        close=D("100.5"), volume=D(0), quote_volume=D(0), trade_count=0, taker_buy_volume=D(0),
        taker_buy_quote_volume=D(0), first_trade_id=None, last_trade_id=None, vwap=D("100.5"), closed=True,
    )  # fmt: skip
    assert ones[1:3] == [flat, msgspec.structs.replace(flat, open_time=at(2), close_time=at(3) - 1)]
    assert [(k.open_time, k.trade_count) for k in by_interval(klines, "5m")] == [(at(0), 3)]


def test_a_long_silence_closes_in_time_order_with_flat_klines() -> None:
    state = new()
    state.apply(trade(1, at(0.5), "100", "1"))
    klines = state.apply(trade(2, at(12.5), "101", "1")).klines
    assert [k.open_time for k in by_interval(klines, "1m")] == [at(m) for m in range(12)]
    assert [k.open_time for k in by_interval(klines, "5m")] == [at(0), at(5)]
    assert all(k.closed for k in klines)


# --- wall clock and restarts -------------------------------------------------------------------------------------


def test_on_time_closes_a_quiet_instruments_window_by_wall_clock() -> None:
    wall = 5_000 * SECOND_NS  # any wall clock: only differences count
    state = new()
    state.apply(trade(1, at(0, 10 * SECOND_NS), "100", "1"), wall_ns=wall)
    # watermark = 12:00:10 + wall time elapsed; the 12:00 minute closes past 12:01:01.999999999
    assert state.on_time(wall + 52 * SECOND_NS - 1) == []
    (kline,) = state.on_time(wall + 52 * SECOND_NS)
    assert (kline.interval, kline.open_time, kline.closed, kline.trade_count) == ("1m", at(0), True, 1)
    assert state.watermark == at(1, 2 * SECOND_NS)
    # later, still quiet: flat klines, one per minute
    assert [k.open_time for k in state.on_time(wall + 172 * SECOND_NS)] == [at(1), at(2)]


def test_without_wall_ns_on_time_anchors_at_its_first_call_after_a_trade() -> None:
    state = new()
    state.apply(trade(1, at(0, 10 * SECOND_NS), "100", "1"))
    assert state.on_time(100 * SECOND_NS) == []  # anchors: 12:00:10 is "now"
    assert state.on_time(151 * SECOND_NS) == []
    assert [k.open_time for k in state.on_time(152 * SECOND_NS)] == [at(0)]


def test_a_replayed_backlog_is_closed_by_event_time_not_wall_time() -> None:
    state = new()
    wall = 10**18
    by_trades: list[Kline] = []
    by_clock: list[Kline] = []
    for n in range(600):  # ten minutes of trades, one a second, replayed within a millisecond of wall time
        by_trades += state.apply(trade(n, at(n / 60), "100", "1"), wall_ns=wall + n * 1000).klines
        by_clock += state.on_time(wall + n * 1000 + 500)
    assert by_clock == []
    assert [k.open_time for k in by_interval(by_trades, "1m")] == [at(m) for m in range(9)]  # 12:09 is open
    assert all(k.trade_count == 60 for k in by_interval(by_trades, "1m"))
    assert state.watermark == at(599 / 60) + 500  # the last on_time's extrapolation: 500 ns


def test_a_restart_never_closes_a_window_early() -> None:
    wall = 7_000 * SECOND_NS
    state = new()
    state.apply(trade(1, at(0, 10 * SECOND_NS), "100", "1"), wall_ns=wall)
    stored = state.to_bytes()
    # the instance that kept running would close an hour of windows one hour later...
    assert len(by_interval(state.on_time(wall + 3600 * SECOND_NS), "1m")) == 60
    # ...the restored one re-anchors instead: the hour offline is not taken as event time
    restored = InstrumentKlines.from_bytes(stored, S_1M_5M)
    assert restored.on_time(wall + 3600 * SECOND_NS) == []
    assert restored.on_time(wall + 3651 * SECOND_NS) == []
    assert [k.open_time for k in restored.on_time(wall + 3652 * SECOND_NS)] == [at(0)]


# --- in-progress updates -----------------------------------------------------------------------------------------


def test_in_progress_updates_are_throttled_and_only_for_changed_windows() -> None:
    state = new()
    state.apply(trade(1, at(0.5), "100", "1"))
    first = state.in_progress(0)
    assert [(k.interval, k.trade_count, k.closed) for k in first] == [("1m", 1, False), ("5m", 1, False)]
    assert state.in_progress(100 * MS) == []  # nothing changed
    state.apply(trade(2, at(0.6), "101", "1"))
    assert state.in_progress(249 * MS) == []  # changed, but updated less than 250 ms ago
    assert [(k.interval, k.trade_count, k.close) for k in state.in_progress(250 * MS)] == [
        ("1m", 2, D(101)), ("5m", 2, D(101)),
    ]  # fmt: skip
    assert state.in_progress(10**9) == []
    # during the grace period two 1m windows are open; only the one that changed is updated
    state.apply(trade(3, at(1, 500 * MS), "102", "1"))
    assert [(k.interval, k.open_time, k.trade_count) for k in state.in_progress(2 * 10**9)] == [
        ("1m", at(1), 1), ("5m", at(0), 3),
    ]  # fmt: skip
    # the throttle is not persisted: a restored instance sends its open klines at once
    restored = InstrumentKlines.from_bytes(state.to_bytes(), S_1M_5M)
    assert [(k.open_time, k.trade_count) for k in by_interval(restored.in_progress(0), "1m")] == [
        (at(0), 2), (at(1), 1),
    ]  # fmt: skip


def test_every_in_progress_kline_aggregates_the_trades_of_its_window_so_far() -> None:
    """In-progress views are built only for windows whose count changed, and copied only to merge: each one
    still equals a brute-force aggregation of every trade applied to its window so far."""
    settings = KlineSettings(intervals=("1m", "5m", "1h", "1d"), grace_ms=2000, update_interval_ms=0)
    intervals = settings.parsed_intervals()
    rng = random.Random(11)
    state = new(settings)
    applied: dict[tuple[str, int], list[Trade]] = defaultdict(list)  # (interval, window) -> its trades so far
    closed: set[tuple[str, int]] = set()
    sent: dict[tuple[str, int], int] = {}  # the trade count of each window's last in-progress kline
    ts, emitted = at(58), 0
    for n in range(1500):
        ts += rng.randint(0, 800 * MS)
        late = rng.randint(0, 1500 * MS) if rng.random() < 0.1 else 0  # out of order, within the grace
        t = trade(n, ts - late, str(rng.randint(90, 110)), f"0.{rng.randint(1, 999):03d}", rng.choice(["buy", "sell"]))
        result = state.apply(t)
        assert not result.too_late
        closed |= {(k.interval, k.open_time) for k in result.klines}
        for interval in intervals:
            applied[interval.name, interval.open_time(t.ts)].append(t)
        if rng.random() < 0.5:
            continue
        updates = state.in_progress(n * MS)
        # Exactly the open windows whose trade count changed since their last update, each once.
        changed = {key for key, mine in applied.items() if key not in closed and sent.get(key) != len(mine)}
        assert sorted((k.interval, k.open_time) for k in updates) == sorted(changed)
        sent.update({(k.interval, k.open_time): k.trade_count for k in updates})
        for kline in updates:
            mine = applied[kline.interval, kline.open_time]
            if len(mine) > 50:  # the brute force is quadratic: check the long windows' first trades only
                continue
            one = KlineSettings(intervals=(kline.interval,), grace_ms=2000)
            expected = by_interval(brute_force(mine, one), kline.interval)[0]
            assert kline == msgspec.structs.replace(expected, closed=False)
            emitted += 1
    assert emitted > 300


# --- idempotence and serialization ---------------------------------------------------------------------------------


def test_positions_at_or_below_the_last_applied_are_duplicates() -> None:
    state = new()
    assert state.apply(trade(1, at(0.1), "100", "1"), position=5) == Applied()
    stored = state.to_bytes()
    assert state.apply(trade(1, at(0.1), "100", "1"), position=5).duplicate
    assert state.apply(trade(2, at(0.2), "100", "1"), position=4).duplicate
    assert state.to_bytes() == stored
    restored = InstrumentKlines.from_bytes(stored, S_1M_5M)
    assert restored.position == 5 and restored.apply(trade(1, at(0.1), "100", "1"), position=5).duplicate
    assert not restored.apply(trade(2, at(0.2), "100", "1"), position=6).duplicate
    (kline,) = by_interval(restored.flush(), "1m")
    assert kline.trade_count == 2


def test_state_bytes_keep_decimals_exact() -> None:
    state = new()
    state.apply(trade(1, at(0.1), "0.000000012345678901234567890123", "1234567890.1234567890"))
    (kline,) = by_interval(InstrumentKlines.from_bytes(state.to_bytes(), S_1M_5M).flush(), "1m")
    assert (f"{kline.open:f}", str(kline.volume)) == ("0.000000012345678901234567890123", "1234567890.1234567890")
    assert str(kline.quote_volume) == "15.2415787532388367503423718379870903950470"


def test_a_corrupt_state_is_refused_with_a_clear_message() -> None:
    stored = new().to_bytes()
    assert InstrumentKlines.from_bytes(stored, KlineSettings(intervals=("5m", "1m"))).symbol == "BTCUSDT"  # order
    with pytest.raises(MarketIngestorError, match="corrupt"):
        InstrumentKlines.from_bytes(b"\x93garbage", S_1M_5M)


def test_an_added_interval_starts_after_the_watermark_and_a_removed_one_stops(caplog) -> None:
    state = new()  # 1m and 5m
    for n, minute in enumerate([0.5, 1.5, 2.5, 3.2]):
        state.apply(trade(n, at(minute), f"{100 + n}", "1"))
    caplog.set_level("WARNING")
    restored = InstrumentKlines.from_bytes(state.to_bytes(), KlineSettings(intervals=("1m", "2m"), grace_ms=2000))
    assert "kline intervals changed from 1m,5m to 1m,2m: 2m start" in caplog.text
    assert "5m dropped" in caplog.text
    # The watermark is at 3.2 min: 2m starts with the window at 4 min; the trade at 3.9 only moves the carried price.
    klines = [
        *restored.apply(trade(4, at(3.9), "104", "1")).klines,
        *restored.apply(trade(5, at(9.0), "105", "1")).klines,
    ]
    klines += restored.flush()
    assert {k.interval for k in klines} == {"1m", "2m"}
    two = by_interval(klines, "2m")
    assert [(k.open_time, k.trade_count, k.close) for k in two] == [
        (at(4), 0, D("104")),  # flat: the last price before it
        (at(6), 0, D("104")),
        (at(8), 1, D("105")),
    ]
    assert [k.open_time for k in by_interval(klines, "1m")] == [at(m) for m in range(3, 10)]


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="invalid kline interval '1M'"):
        KlineSettings(intervals=("1m", "1M"))
    with pytest.raises(ConfigError, match="invalid kline interval"):
        msgspec.convert({"intervals": ["5x"]}, KlineSettings)
    with pytest.raises(msgspec.ValidationError, match=r"grace_ms"):
        msgspec.convert({"grace_ms": -1}, KlineSettings)
    with pytest.raises(ConfigError, match="grace_ms must be >= 0"):
        KlineSettings(grace_ms=-1)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"grace": 1}, KlineSettings)
    assert KlineSettings(intervals=["1m"]).intervals == ("1m",)  # type: ignore[arg-type]
    assert [i.name for i in KlineSettings().parsed_intervals()] == ["1m", "5m", "15m", "1h", "4h", "1d"]


def test_trade_problem_names_what_cannot_be_aggregated() -> None:
    assert trade_problem(trade(1, 0, "1.5", "0")) is None
    assert "price NaN" in (trade_problem(trade(1, 0, "NaN", "1")) or "")
    assert "price 0" in (trade_problem(trade(1, 0, "0", "1")) or "")
    assert "quantity -1" in (trade_problem(trade(1, 0, "1", "-1")) or "")
    assert "quantity Infinity" in (trade_problem(trade(1, 0, "1", "Infinity")) or "")


def test_aggregate_does_not_leak_its_decimal_context_to_the_caller() -> None:
    trades = [trade(n, at(n), "1", "1") for n in range(10_000)]
    for _ in aggregate(trades, S_1M_5M):
        assert getcontext().prec == 28


# --- properties against brute force --------------------------------------------------------------------------------

PRICES = [D(p) for p in ("0.00001234", "1", "1.50", "99.99", "100", "100.0", "27123.45", "27123.46")]
QTYS = [D(q) for q in ("0", "0.001", "0.5", "1", "2.00000000", "1234.5678")]
PROPERTY_SETTINGS = [
    KlineSettings(intervals=("1m", "5m", "1h"), grace_ms=2000, max_lateness_ms=300_000),
    KlineSettings(intervals=("2m", "3m"), grace_ms=1500, max_lateness_ms=200_000),  # a bucket no interval has
    KlineSettings(intervals=("30s", "1m", "1d", "1w"), grace_ms=0, max_lateness_ms=60_000),
]


@st.composite
def trade_streams(draw: st.DrawFn, max_delay_ms: Callable[[KlineSettings], int]) -> tuple[KlineSettings, list[Trade]]:
    """Random trades in arrival order: each arrives up to ``max_delay_ms`` after its ts (in ts + delay order)."""
    settings = draw(st.sampled_from(PROPERTY_SETTINGS))
    count = draw(st.integers(1, 40))
    span_ms = draw(st.sampled_from([5_000, 120_000, 1_800_000]))
    start = T0 + draw(st.integers(-3 * 10**9, 3 * 10**9)) * MS  # across the leap day and week boundaries
    trades = []
    for n in range(count):
        ts = start + draw(st.integers(0, span_ms)) * MS + draw(st.sampled_from([0, 1, 999_999]))
        if draw(st.booleans()):  # near a minute boundary, where grace and lateness decisions are made
            ts += -(ts % MINUTE_NS) + draw(st.integers(-3000, 3000)) * MS - draw(st.sampled_from([0, 1]))
        symbol = draw(st.sampled_from(["BTCUSDT", "ETHUSDT"]))
        side = draw(st.sampled_from(["buy", "sell"]))
        trades.append(trade(n, ts, str(draw(st.sampled_from(PRICES))), str(draw(st.sampled_from(QTYS))), side, symbol))
    limit = max_delay_ms(settings)
    delays = [draw(st.one_of(st.just(0), st.just(limit), st.integers(0, limit))) * MS for _ in trades]
    order = sorted(range(count), key=lambda n: (trades[n].ts + delays[n], n))
    return settings, [trades[n] for n in order]


def run_split(trades: Sequence[Trade], settings: KlineSettings, split: int | None) -> list[Kline]:
    """aggregate(), with every instrument's state stored and restored after ``split`` trades."""
    states: dict[str, InstrumentKlines] = {}
    out: list[Kline] = []
    for n, t in enumerate(trades):
        if n == split:
            states = {k: InstrumentKlines.from_bytes(v.to_bytes(), settings) for k, v in states.items()}
        state = states.setdefault(t.symbol, InstrumentKlines.new(t.exchange, t.symbol, settings))
        applied = state.apply(t, position=n)
        assert not applied.too_late and not applied.duplicate
        out += applied.klines
    if split == len(trades):
        states = {k: InstrumentKlines.from_bytes(v.to_bytes(), settings) for k, v in states.items()}
    for state in states.values():
        out += state.flush()
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=trade_streams(lambda s: s.grace_ms), data=st.data())
def test_within_grace_the_klines_equal_a_brute_force_recomputation(
    stream: tuple[KlineSettings, list[Trade]], data: st.DataObject
) -> None:
    settings_, trades = stream
    klines = list(aggregate(trades, settings_))
    assert all(k.revision == 0 and k.closed for k in klines)  # nothing was late
    assert canonical(klines) == canonical(brute_force(trades, settings_))
    for interval in settings_.intervals:  # each call's output is in time order per interval
        for symbol in ("BTCUSDT", "ETHUSDT"):
            times = [k.open_time for k in klines if k.interval == interval and k.symbol == symbol]
            assert times == sorted(times)
    split = data.draw(st.integers(0, len(trades)), label="split")
    assert run_split(trades, settings_, split) == run_split(trades, settings_, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=trade_streams(lambda s: s.max_lateness_ms), data=st.data())
def test_within_the_horizon_the_last_revisions_equal_a_brute_force_recomputation(
    stream: tuple[KlineSettings, list[Trade]], data: st.DataObject
) -> None:
    settings_, trades = stream
    klines = run_split(trades, settings_, None)
    assert final_revisions(klines) == canonical(brute_force(trades, settings_))
    split = data.draw(st.integers(0, len(trades)), label="split")
    assert run_split(trades, settings_, split) == klines


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=trade_streams(lambda s: s.grace_ms), data=st.data())
def test_restoring_under_other_intervals_keeps_kept_ones_exact_and_starts_added_ones_complete(
    stream: tuple[KlineSettings, list[Trade]], data: st.DataObject
) -> None:
    old_settings, trades = stream
    names = data.draw(st.sets(st.sampled_from(["30s", "1m", "2m", "5m", "15m", "1h"]), min_size=1), label="new")
    new_settings = KlineSettings(
        intervals=tuple(names), grace_ms=old_settings.grace_ms, max_lateness_ms=old_settings.max_lateness_ms
    )
    split = data.draw(st.integers(0, len(trades)), label="split")
    states: dict[str, InstrumentKlines] = {}
    before: list[Kline] = []
    for n, t in enumerate(trades[:split]):
        state = states.setdefault(t.symbol, InstrumentKlines.new(t.exchange, t.symbol, old_settings))
        before += state.apply(t, position=n).klines
    begins: dict[tuple[str, str], int] = {}  # (symbol, added interval) -> its first window
    for symbol, state in states.items():
        for interval in new_settings.parsed_intervals():
            if interval.name not in old_settings.intervals and state.watermark is not None:
                begins[(symbol, interval.name)] = interval.open_time(state.watermark) + interval.ns
    states = {symbol: InstrumentKlines.from_bytes(state.to_bytes(), new_settings) for symbol, state in states.items()}
    after: list[Kline] = []
    for n, t in enumerate(trades[split:], start=split):
        state = states.setdefault(t.symbol, InstrumentKlines.new(t.exchange, t.symbol, new_settings))
        applied = state.apply(t, position=n)
        assert not applied.too_late and not applied.duplicate
        after += applied.klines
    for state in states.values():
        after += state.flush()
    assert all(k.interval in new_settings.intervals for k in after)  # removed intervals stop
    reference = canonical(brute_force(trades, new_settings))
    for k in canonical(after):
        begin = begins.get((k.symbol, k.interval))
        assert begin is None or k.open_time >= begin, f"{k.interval} window {k.open_time} before {begin}"
    kept = [name for name in new_settings.intervals if name in old_settings.intervals]
    got = canonical(k for k in [*before, *after] if k.interval in kept)
    assert got == [k for k in reference if k.interval in kept]
    added = [k for k in after if k.interval not in kept]
    wanted = [
        k for k in reference
        if k.interval not in kept and k.open_time >= begins.get((k.symbol, k.interval), k.open_time)
    ]  # fmt: skip
    assert canonical(added) == wanted


# --- memory ------------------------------------------------------------------------------------------------------


def busy_stream(symbol: str, minutes: int, every_ms: int, seed: int) -> list[Trade]:
    rng = random.Random(seed)
    return [
        trade(n, T0 + n * every_ms * MS, f"{27000 + rng.randint(0, 9999) / 100:.2f}", f"{rng.randint(1, 10**6)}e-6",
              rng.choice(["buy", "sell"]), symbol)
        for n in range(minutes * 60_000 // every_ms)
    ]  # fmt: skip


def test_state_stays_bounded_as_windows_expire() -> None:
    state = new(KlineSettings())
    sizes = {}
    with exact_context():
        for t in busy_stream("BTCUSDT", 240, 500, seed=1):
            state.apply(t)
            if (t.ts - T0) % (60 * MINUTE_NS) == 0:
                sizes[(t.ts - T0) // (60 * MINUTE_NS)] = len(state.to_bytes())
    # after the first hour (lateness horizon filled), the stored state no longer grows with time
    assert max(sizes[2], sizes[3]) <= sizes[1] * 1.1, sizes


def test_a_thousand_instruments_of_state_stay_small(capsys: pytest.CaptureFixture[str]) -> None:
    settings_ = KlineSettings()  # six intervals, ten minutes of lateness
    states = {}
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    with exact_context():
        for index in range(1000):
            symbol = f"SYM{index}USDT"
            state = states[symbol] = InstrumentKlines.new("binance", symbol, settings_)
            for t in busy_stream(symbol, 20, 3000, seed=index):  # 20 minutes: past the ten-minute horizon
                state.apply(t)
    in_memory = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    sizes = sorted(len(s.to_bytes()) for s in states.values())
    with capsys.disabled():
        print(
            f"\nkline state, 1000 instruments x 6 intervals: to_bytes {sizes[0]}..{sizes[-1]} bytes per instrument "
            f"(median {sizes[500]}), {in_memory / 1000 / 1024:.1f} KiB in memory per instrument"
        )
    assert sizes[-1] < 4096
    assert in_memory < 1000 * 40 * 1024
