"""Series: indicators that follow corrections of older klines within a horizon. Random series with random
corrections (and late insertions) against ``compute`` on the final series, digit for digit; value revisions that
grow; the kline aggregator's own corrections stay within the horizon; old per-indicator states load; stale beyond."""

from __future__ import annotations

import random
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_ingestor.indicators import (
    DEFAULT_SPECS,
    IndicatorInputError,
    IndicatorStateError,
    Update,
    compute,
    from_bytes,
    parse_spec,
)
from market_ingestor.indicators.series import Bar, Series, horizon
from market_ingestor.model import IndicatorValue, Kline, Trade
from market_ingestor.streams.klines import KlineSettings, aggregate
from market_ingestor.windows import parse_interval

MINUTE_NS = 60 * 10**9
HOUR_NS = 60 * MINUTE_NS
START = 1_704_067_200 * 10**9 - 5 * HOUR_NS  # 2024-01-01T00:00Z minus 5 h: hourly klines cross a UTC midnight
SPECS = ("sma_5", "wma_5", "ema_5", "rsi_5", "macd_3_6_4", "bbands_5_2", "atr_5", "vwap")


def kline(i: int, rng: random.Random, revision: int = 0, interval: str = "1h") -> Kline:
    """Kline ``i`` of a random walk, one of many versions: the prices at 2 decimals, sometimes a flat one."""
    step = parse_interval(interval).ns
    close = Decimal(40000 + rng.randint(-3000, 3000)) / 100 + i
    if rng.random() < 0.1:  # a flat kline: no trade, the previous close carried forward
        o = h = low = close
        volume = quote = Decimal(0)
    else:
        o = close + Decimal(rng.randint(-500, 500)) / 100
        h, low = max(o, close) + Decimal(rng.randint(0, 300)) / 100, min(o, close) - Decimal(rng.randint(0, 300)) / 100
        volume = Decimal(rng.randint(1, 10**6)) / 10**4
        quote = (volume * low).quantize(Decimal("0.000001"))
    return Kline(
        exchange="binance", symbol="BTCUSDT", interval=interval, open_time=START + i * step,
        close_time=START + (i + 1) * step - 1, open=o, high=h, low=low, close=close, volume=volume,
        quote_volume=quote, trade_count=rng.randint(0, 50), taker_buy_volume=volume / 2,
        taker_buy_quote_volume=quote / 2, first_trade_id=None, last_trade_id=None,
        vwap=quote / volume if volume else close, closed=True, revision=revision,
    )  # fmt: skip


def earlier_version(final: Kline, rng: random.Random, revision: int) -> Kline:
    """What a kline looked like before late trades changed it: other prices, at most its final volume (late
    trades only add volume, so no value disappears)."""
    other = kline(0, rng)
    volume = final.volume * rng.randint(0, 1)
    return msgspec.structs.replace(
        final, high=other.high, low=other.low, close=other.close, open=other.open,
        volume=volume, quote_volume=final.quote_volume if volume else Decimal(0), revision=revision,
    )  # fmt: skip


def latest_by_open_time(values: list[IndicatorValue]) -> dict[tuple[str, int], IndicatorValue]:
    """The last value emitted per (name, open_time), checking that each re-emission has a higher revision."""
    latest: dict[tuple[str, int], IndicatorValue] = {}
    for value in values:
        key = (value.name, value.open_time)
        if key in latest:
            assert value.revision > latest[key].revision, f"{key}: revision {value.revision} after {latest[key]}"
        latest[key] = value
    return latest


def expected(specs: tuple[str, ...], final: list[Kline]) -> dict[tuple[str, int], dict[str, str]]:
    """What compute gives on the final series, Decimals as their exact strings (so 1.0 and 1.00 differ)."""
    out = {}
    for spec in specs:
        for value in compute(spec, final):
            out[(spec, value.open_time)] = {key: str(v) for key, v in value.values.items()}
    return out


def exact(latest: dict[tuple[str, int], IndicatorValue]) -> dict[tuple[str, int], dict[str, str]]:
    return {key: {k: str(v) for k, v in value.values.items()} for key, value in latest.items()}


@st.composite
def corrected_streams(draw: st.DrawFn) -> tuple[int, list[Kline], list[Kline]]:
    """(horizon, the klines in arrival order, the final series). Kline ``i`` comes in versions 0..r, each at a
    step from ``i`` to ``i + horizon - 1`` (while at most horizon - 1 later klines have come), the first one
    possibly late too (a gap filled, or the series extended back); the last version is the final one."""
    size = draw(st.integers(1, 6), label="horizon")
    count = draw(st.integers(1, 45), label="count")
    rng = random.Random(draw(st.integers(0, 2**32), label="seed"))
    final = [kline(i, rng) for i in range(count)]
    arrivals: list[tuple[int, float, int]] = []  # (step, tie-break, kline index)
    for i in range(count):
        last = min(i + size - 1, count - 1)
        late = draw(st.booleans(), label="first late")
        arrivals.append((rng.randint(i, last) if late else i, rng.random(), i))
        arrivals += [(rng.randint(i, last), rng.random(), i) for _ in range(draw(st.integers(0, 3), label="fixes"))]
    arrivals.sort()
    versions = [sum(1 for a in arrivals if a[2] == i) for i in range(count)]
    stream, seen = [], [0] * count
    for _, _, i in arrivals:  # each kline's versions in revision order, whatever step they were drawn for
        revision, seen[i] = seen[i], seen[i] + 1
        if revision == versions[i] - 1:
            final[i] = msgspec.structs.replace(final[i], revision=revision)
            stream.append(final[i])
        else:
            stream.append(earlier_version(final[i], rng, revision))
    return size, stream, final


def within_horizon(stream: list[Kline], size: int) -> bool:
    """Every kline arrives while at most ``size - 1`` later klines have arrived before it."""
    seen: set[int] = set()
    for k in stream:
        if sum(1 for t in seen if t > k.open_time) > size - 1:
            return False
        seen.add(k.open_time)
    return True


@settings(max_examples=150, deadline=None)
@given(case=corrected_streams(), split=st.integers(0, 200))
def test_the_latest_values_equal_compute_on_the_final_series(case: tuple[int, list[Kline], list[Kline]], split: int):
    """Whatever corrections (and late klines) arrive within the horizon, the last value emitted for each
    open_time is compute's on the final series, digit for digit, and every re-emission outranks the one before;
    storing and loading the series midway changes nothing."""
    size, stream, final = case
    assert within_horizon(stream, size)
    series, emitted = Series.new(SPECS, size), []
    for n, k in enumerate(stream):
        if n == split:
            series = Series.from_bytes(series.to_bytes(), SPECS, size)
        assert series.classify(k) is not Update.STALE
        emitted += series.update(k)
    assert exact(latest_by_open_time(emitted)) == expected(SPECS, final)
    assert_reach(series, final, size)


def assert_reach(series: Series, final: list[Kline], size: int) -> None:
    """Corrections reach exactly the last ``size`` klines; the history keeps them and at most ``size - 1`` more
    (the base moves on ``size`` klines at a time)."""
    assert min(size, len(final)) <= len(series.history) < 2 * size
    assert [bar.open_time for bar in series.history[-size:]] == [k.open_time for k in final[-size:]]
    for k in final[-size:]:
        assert series.classify(msgspec.structs.replace(k, revision=k.revision + 1)) is Update.REPLACE
    for k in final[:-size]:
        assert series.classify(msgspec.structs.replace(k, revision=k.revision + 1)) is Update.STALE


@settings(max_examples=30, deadline=None)
@given(case=corrected_streams())
def test_the_stored_state_is_the_one_of_the_final_series(case: tuple[int, list[Kline], list[Kline]]) -> None:
    size, stream, final = case
    revised, clean = Series.new(SPECS, size), Series.new(SPECS, size)
    for k in stream:
        revised.update(k)
    for k in final:
        clean.update(k)
    strip = [msgspec.structs.replace(bar, emitted=0) for bar in revised.history]
    assert strip == [msgspec.structs.replace(bar, emitted=0) for bar in clean.history]
    assert {n: i.to_bytes() for n, i in revised.base.items()} == {n: i.to_bytes() for n, i in clean.base.items()}


def test_a_correction_re_emits_only_values_that_changed_with_a_higher_revision() -> None:
    rng = random.Random(5)
    klines = [kline(i, rng) for i in range(30)]
    series = Series.new(("sma_3", "vwap"), 4)
    for k in klines:
        series.update(k)
    # A late trade at an old price changes the volume only: the SMA of the close stays, the VWAP changes for
    # kline 26 and the rest of its UTC day (27, 28); kline 29 opens the next day.
    old = klines[26]
    assert klines[29].open_time % (24 * HOUR_NS) == 0
    volume_only = msgspec.structs.replace(old, volume=old.volume + 1, quote_volume=old.quote_volume + 1, revision=1)
    assert [(v.name, v.open_time, v.revision) for v in series.update(volume_only)] == [
        ("vwap", klines[26].open_time, 1),
        ("vwap", klines[27].open_time, 1),
        ("vwap", klines[28].open_time, 1),
    ]
    # A new close: the SMA changes for it and the two after it (3 klines), with revisions above those sent.
    close = msgspec.structs.replace(volume_only, close=old.close + 7, revision=2)
    assert [(v.name, v.open_time, v.revision) for v in series.update(close)] == [
        ("sma_3", klines[26].open_time, 2),
        ("sma_3", klines[27].open_time, 2),  # one revision per open_time, shared: the VWAP's took 1
        ("sma_3", klines[28].open_time, 2),
    ]
    assert series.update(close) == []  # a re-delivery changes nothing


def test_corrections_older_than_the_history_are_stale_and_change_nothing() -> None:
    rng = random.Random(8)
    klines = [kline(i, rng) for i in range(20)]
    series = Series.new(DEFAULT_SPECS, 3)
    for k in klines:
        series.update(k)
    state = series.to_bytes()
    # The history holds the last 3 klines and 2 before them (the base moves on 3 klines at a time): beyond reach
    assert [bar.open_time for bar in series.history] == [k.open_time for k in klines[-5:]]
    for stale in (
        msgspec.structs.replace(klines[16], close=Decimal(1), revision=1),  # just before the reach
        msgspec.structs.replace(klines[15], close=Decimal(1), revision=1),  # in the history, beyond the reach
        msgspec.structs.replace(klines[0], close=Decimal(1), revision=5),
        msgspec.structs.replace(klines[18], close=Decimal(1), revision=-1),  # an older revision of a kline in it
    ):
        assert series.classify(stale) is Update.STALE
        assert series.update(stale) == []
        assert series.to_bytes() == state
    assert series.classify(msgspec.structs.replace(klines[17], revision=1)) is Update.REPLACE
    assert series.classify(kline(20, rng)) is Update.APPEND


def test_the_aggregators_corrections_stay_within_the_horizon() -> None:
    """Trades up to max_lateness late, through the real kline aggregator: corrections (of corrections), flat
    klines re-emitted with a corrected close, a series extended back. None is stale for its interval's horizon,
    and the values equal compute on the final klines."""
    lateness_ms = 300_000
    agg_settings = KlineSettings(intervals=("1m", "5m"), grace_ms=1000, max_lateness_ms=lateness_ms)
    rng = random.Random(21)
    trades = []
    for n in range(600):
        ts = START + rng.randint(0, 60 * MINUTE_NS)
        if rng.random() < 0.3:  # a busy stretch, after quiet minutes: flat klines in between
            ts = START + 30 * MINUTE_NS + rng.randint(0, 2 * MINUTE_NS)
        price = Decimal(1000 + rng.randint(-50, 50)) / 10
        trades.append(Trade("binance", "BTCUSDT", str(n), price, Decimal(rng.randint(1, 100)) / 10, "buy", ts, ts))
    limit_ns = lateness_ms * 10**6
    delays = [rng.choice([0, rng.randint(0, limit_ns), limit_ns - rng.randint(0, 10**9)]) for _ in trades]
    arrived = [t for _, t in sorted(zip(delays, trades, strict=True), key=lambda p: p[1].ts + p[0])]
    klines = [k for k in aggregate(arrived, agg_settings, on_too_late=lambda trade, reason: None) if k.closed]
    assert any(k.revision > 1 for k in klines)  # corrections of corrections, as the test intends
    for interval in agg_settings.intervals:
        size = horizon(parse_interval(interval).ns, lateness_ms)
        series, emitted, deepest = Series.new(DEFAULT_SPECS, size), [], 0
        stream = [k for k in klines if k.interval == interval]
        for n, k in enumerate(stream):
            assert series.classify(k) is not Update.STALE, (interval, k.open_time, k.revision)
            deepest = max(deepest, len({o.open_time for o in stream[:n] if o.open_time > k.open_time}))
            emitted += series.update(k)
        # The deepest correction: less than (lateness - grace) / interval klines back (the horizons are 7 and 3).
        assert deepest == {"1m": 4, "5m": 0}[interval]
        finals: dict[int, Kline] = {}
        for k in stream:
            if k.open_time not in finals or k.revision >= finals[k.open_time].revision:
                finals[k.open_time] = k
        final = [finals[t] for t in sorted(finals)]
        assert exact(latest_by_open_time(emitted)) == expected(DEFAULT_SPECS, final)


@pytest.mark.parametrize(
    ("interval", "lateness_ms", "size"),
    [("1m", 600_000, 12), ("5m", 600_000, 4), ("15m", 600_000, 3), ("1h", 600_000, 3), ("1d", 600_000, 3),
     ("1m", 90_000, 4), ("1m", 0, 2)],
)  # fmt: skip
def test_the_horizon_covers_the_lateness_with_a_margin(interval: str, lateness_ms: int, size: int) -> None:
    assert horizon(parse_interval(interval).ns, lateness_ms) == size


def test_states_of_the_previous_format_load_as_a_base_without_history() -> None:
    rng = random.Random(13)
    klines = [kline(i, rng) for i in range(40)]
    old = {spec: parse_spec(spec) for spec in DEFAULT_SPECS}
    for k in klines[:25]:
        for indicator in old.values():
            indicator.update(k)
    stored = {spec: indicator.to_bytes() for spec, indicator in old.items()}  # the previous row's interval entry
    series = Series.from_indicators({s: from_bytes(b) for s, b in stored.items()}, DEFAULT_SPECS, 3)
    assert series.history == [] and series.folded == klines[24].open_time
    assert series.classify(msgspec.structs.replace(klines[24], revision=1)) is Update.STALE  # nothing to replay
    final, emitted = list(klines), []
    for i in range(25, 40):
        emitted += series.update(klines[i])
        if i >= 27:  # correct the kline two back, within the horizon
            final[i - 2] = msgspec.structs.replace(klines[i - 2], close=klines[i - 2].close + 1, revision=1)
            emitted += series.update(final[i - 2])
    want = {key: v for key, v in expected(DEFAULT_SPECS, final).items() if key[1] >= klines[25].open_time}
    assert exact(latest_by_open_time(emitted)) == want


def test_configured_specs_decide_what_a_loaded_series_computes() -> None:
    rng = random.Random(2)
    klines = [kline(i, rng) for i in range(10)]
    series = Series.new(("sma_3", "ema_3"), 4)
    for k in klines[:8]:
        series.update(k)
    loaded = Series.from_bytes(series.to_bytes(), ("sma_3", "rsi_2"), 4)
    assert list(loaded.base) == ["sma_3", "rsi_2"]  # ema_3 dropped, rsi_2 fresh from the base
    values = loaded.update(klines[8])
    assert {v.name for v in values} == {"sma_3", "rsi_2"}  # rsi_2 warmed up on the history's 4 klines
    assert [v.values for v in values if v.name == "rsi_2"] == [v.values for v in compute("rsi_2", klines[4:9])[-1:]]


def test_indicators_read_only_the_fields_a_bar_keeps() -> None:
    """A replay feeds indicators klines rebuilt from bars: every registered indicator must compute the same
    from them as from the original klines."""
    rng = random.Random(4)
    klines = [kline(i, rng) for i in range(60)]
    rebuilt = [Bar.of(k, 0).kline(k) for k in klines]
    for spec in DEFAULT_SPECS:
        assert compute(spec, rebuilt) == compute(spec, klines)


def test_bad_input_and_bad_bytes_say_what_is_wrong() -> None:
    series = Series.new(SPECS, 3)
    with pytest.raises(IndicatorInputError, match="not closed"):
        series.update(msgspec.structs.replace(kline(0, random.Random(1)), closed=False))
    with pytest.raises(IndicatorStateError, match="does not decode"):
        Series.from_bytes(b"\x93\x01", SPECS, 3)
    with pytest.raises(ValueError, match="at least one"):
        Series.new(SPECS, 0)


def test_an_indicator_that_refuses_a_kline_skips_it_in_replays_too() -> None:
    rng = random.Random(6)
    klines = [kline(i, rng) for i in range(12)]
    huge = Decimal("1" * 75 + "." + "1" * 75)  # its sum fits in exact arithmetic, its square does not
    refused = msgspec.structs.replace(klines[9], close=huge)
    series, emitted = Series.new(("sma_3", "bbands_3_2"), 4), []
    for k in [*klines[:9], refused, *klines[10:]]:
        emitted += series.update(k)
    corrected = msgspec.structs.replace(klines[8], close=klines[8].close + 1, revision=1)
    emitted += series.update(corrected)
    # bbands skipped the refused kline, in the replay as well; sma took it
    want = {
        "sma_3": compute("sma_3", [*klines[:8], corrected, refused, *klines[10:]]),
        "bbands_3_2": compute("bbands_3_2", [*klines[:8], corrected, *klines[10:]]),
    }
    latest = latest_by_open_time(emitted)
    for spec, values in want.items():
        got = {t: v.values for (name, t), v in latest.items() if name == spec}
        assert got == {v.open_time: v.values for v in values}


def test_a_series_kept_for_a_longer_horizon_loads_cut_to_the_new_one() -> None:
    """A shorter ``max_lateness_ms`` after a restart: the stored history is longer than the new horizon allows;
    the base moves on to the last klines the new horizon reaches, and the values go on as compute's."""
    rng = random.Random(11)
    klines = [kline(i, rng) for i in range(40)]
    series = Series.new(DEFAULT_SPECS, 8)
    for k in klines[:30]:
        series.update(k)
    assert len(series.history) == 14
    loaded = Series.from_bytes(series.to_bytes(), DEFAULT_SPECS, 2)
    assert [bar.open_time for bar in loaded.history] == [k.open_time for k in klines[28:30]]
    assert loaded.folded == klines[27].open_time
    emitted = [v for k in klines[30:] for v in loaded.update(k)]
    want = {key: v for key, v in expected(DEFAULT_SPECS, klines).items() if key[1] >= klines[30].open_time}
    assert exact(latest_by_open_time(emitted)) == want
    assert_reach(loaded, klines, 2)


def test_the_history_is_kept_encoded_in_memory_and_stored_as_bars() -> None:
    """A worker holds a series per instrument and interval: the history's bars stay encoded in memory (a decoded
    bar with its six Decimals is ~3x the size), and ``to_bytes`` still writes ``[base, [Bar, ...], folded]``."""
    import gc
    import tracemalloc

    rng = random.Random(5)
    size = horizon(MINUTE_NS, 600_000)  # 12: the history holds 12..23 1m klines
    wire = [msgspec.json.encode(kline(i, rng, interval="1m")) for i in range(2 * size - 1)]
    decoder = msgspec.json.Decoder(Kline)
    series = Series.new(DEFAULT_SPECS, size)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in wire:  # each kline decoded as the worker decodes it, then dropped
            series.update(decoder.decode(data))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(series.history) == 2 * size - 1
    # Measured: ~16 KB kept encoded, ~26 KB with the bars decoded.
    assert held < 20_000, held
    base, history, folded = msgspec.msgpack.decode(series.to_bytes())
    assert set(base) == set(DEFAULT_SPECS) and folded == series.folded
    assert msgspec.convert(history, list[Bar]) == series.history
