"""Indicators: hand-checked values, agreement with talipp (an independent float implementation) on long series,
exactness against rational and 80-digit arithmetic, revisions, serialization, spec parsing, errors."""

from __future__ import annotations

import decimal
import itertools
import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
import talipp.indicators as ta
from hypothesis import given, settings
from hypothesis import strategies as st
from talipp.ohlcv import OHLCV

from market_ingestor.errors import MarketIngestorError
from market_ingestor.indicators import (
    DEFAULT_SPECS,
    EMA,
    INDICATORS,
    SMA,
    Indicator,
    IndicatorInputError,
    IndicatorSpecError,
    IndicatorStateError,
    Update,
    compute,
    from_bytes,
    parse_spec,
)
from market_ingestor.indicators.base import kind_of
from market_ingestor.model import IndicatorValue, Kline

HOUR_NS = 3600 * 10**9
INTERVAL_NS = {"1m": 60 * 10**9, "15m": 900 * 10**9, "1h": HOUR_NS, "1d": 24 * HOUR_NS}
MIDNIGHT_NS = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
D34 = decimal.Context(prec=34)  # the precision the indicators promise, for the exact oracles
D80 = decimal.Context(prec=80)  # far beyond it, for the high-precision oracles
Row = tuple[Decimal, Decimal, Decimal, Decimal, Decimal, Decimal]  # o, h, l, c, volume, quote volume


def kline(
    open_time: int,
    ohlc: tuple[str | Decimal, ...],
    volume: str | Decimal = "1",
    quote_volume: str | Decimal | None = None,
    interval: str = "1m",
    revision: int = 0,
    closed: bool = True,
) -> Kline:
    o, h, low, c = (Decimal(x) for x in ohlc)
    v = Decimal(volume)
    qv = Decimal(quote_volume) if quote_volume is not None else v * c
    return Kline(
        exchange="binance",
        symbol="BTCUSDT",
        interval=interval,
        open_time=open_time,
        close_time=open_time + INTERVAL_NS[interval] - 1,
        open=o,
        high=h,
        low=low,
        close=c,
        volume=v,
        quote_volume=qv,
        trade_count=1,
        taker_buy_volume=Decimal(0),
        taker_buy_quote_volume=Decimal(0),
        first_trade_id=None,
        last_trade_id=None,
        vwap=D34.divide(qv, v) if v else c,
        closed=closed,
        revision=revision,
    )


def flat_klines(values: list[str]) -> list[Kline]:
    return [kline(MIDNIGHT_NS + i * INTERVAL_NS["1m"], (c, c, c, c)) for i, c in enumerate(values)]


def candle(rng: random.Random, open_: Decimal, close: Decimal, unit: Decimal, volume: Decimal) -> Row:
    """Wicks beyond the body, and a quote volume traded at a price inside the range."""
    high = max(open_, close) + unit * rng.randint(0, 30)
    low = max(min(open_, close) - unit * rng.randint(0, 30), unit)
    price = low + (high - low) * Decimal(rng.randint(0, 1000)) / 1000
    return open_, high, low, close, volume, (volume * price).quantize(unit * Decimal("0.0001"))


def random_walk(
    count: int = 2000, seed: int = 7, interval: str = "1m", start: int = MIDNIGHT_NS - 2 * HOUR_NS
) -> list[Kline]:
    """A BTC-like walk at 2 decimals from 2 h before midnight, so 1m klines cross two UTC midnights."""
    rng, unit, price, out = random.Random(seed), Decimal("0.01"), Decimal("42000.00"), []
    for i in range(count):
        close = max(price + unit * rng.randint(-2500, 2500), unit)
        o, h, low, c, v, qv = candle(rng, price, close, unit, Decimal(rng.randint(1, 10**6)) / 10**4)
        out.append(kline(start + i * INTERVAL_NS[interval], (o, h, low, c), v, qv, interval))
        price = close
    return out


def real_shaped(count: int = 2000, seed: int = 11) -> list[Kline]:
    """A small-cap token at 6 decimals on 15m klines from midnight: a flat zero-volume opening (no trade yet, so
    RSI 0/0, ATR 0 and no VWAP), then trends, chop, single-kline spikes of 8%, gaps between a close and the next
    open, and flat zero-volume stretches (some across midnight)."""
    rng, unit = random.Random(seed), Decimal("0.000001")
    price = Decimal("0.052300")

    def flat(length: int) -> Iterator[Row]:
        for _ in range(length):
            yield price, price, price, price, Decimal(0), Decimal(0)

    def move(length: int, drift: int, noise: int) -> Iterator[Row]:
        nonlocal price
        for _ in range(length):
            open_ = price + unit * rng.randint(-30, 30) if rng.random() < 0.1 else price  # an occasional gap
            close = max(open_ + unit * (drift + rng.randint(-noise, noise)), 1000 * unit)
            yield candle(rng, open_, close, unit, Decimal(rng.randint(0, 5 * 10**6)) / 100)
            price = close

    def spike() -> Iterator[Row]:
        o, h, low, c, v, qv = candle(rng, price, price, unit, Decimal(rng.randint(10**6, 10**7)))
        jump = (price * Decimal("0.08")).quantize(unit)
        yield (o, h + jump, low, c, v, qv) if rng.random() < 0.5 else (o, h, low - jump, c, v, qv)

    def segments() -> Iterator[Iterator[Row]]:
        yield flat(40)
        while True:
            pick = rng.random()
            if pick < 0.2:
                yield flat(rng.randint(5, 40))
            elif pick < 0.4:
                yield spike()
            else:
                yield move(rng.randint(10, 60), rng.choice([-40, -10, 0, 10, 40]), rng.randint(1, 60))

    rows = itertools.islice(itertools.chain.from_iterable(segments()), count)
    step = INTERVAL_NS["15m"]
    return [kline(MIDNIGHT_NS + i * step, (o, h, low, c), v, qv, "15m") for i, (o, h, low, c, v, qv) in enumerate(rows)]


SERIES = {"random_walk": random_walk(), "real_shaped": real_shaped()}


def feed(indicator: Indicator, klines: list[Kline]) -> list[IndicatorValue | None]:
    return [indicator.update(k) for k in klines]


def values_of(indicator: Indicator, klines: list[Kline]) -> list[dict[str, Decimal] | None]:
    return [v.values if v else None for v in feed(indicator, klines)]


def test_the_series_have_the_shapes_the_tests_rely_on() -> None:
    walk, shaped = SERIES["random_walk"], SERIES["real_shaped"]
    assert len({k.open_time // INTERVAL_NS["1d"] for k in walk}) == 3  # two UTC midnights crossed
    assert all(k.volume == 0 and k.high == k.low for k in shaped[:40])
    flat_runs = sum(1 for a, b in itertools.pairwise(shaped) if a.volume != 0 and b.volume == 0)
    gaps = sum(1 for a, b in itertools.pairwise(shaped) if b.open != a.close)
    spikes = sum(1 for k in shaped if (k.high - k.low) > k.close * Decimal("0.07"))
    quiet_midnights = sum(1 for k in shaped if k.open_time % INTERVAL_NS["1d"] == 0 and k.volume == 0)
    assert flat_runs >= 5 and gaps >= 50 and spikes >= 5 and quiet_midnights >= 3


# --- hand-checked values --------------------------------------------------------------------------------------


def test_a_value_carries_the_klines_identity_and_revision() -> None:
    k = kline(MIDNIGHT_NS, ("1", "2", "1", "1.5"), "2", "3.1", interval="1h", revision=3)
    assert parse_spec("vwap").update(k) == IndicatorValue(
        exchange="binance",
        symbol="BTCUSDT",
        interval="1h",
        name="vwap",
        open_time=MIDNIGHT_NS,
        values={"value": Decimal("1.55")},
        revision=3,
    )


V = Decimal


@pytest.mark.parametrize(
    ("spec", "series", "expected"),
    [
        ("sma_3", ["1", "2", "3", "4.5"], [None, None, V(2), V("3.166666666666666666666666666666667")]),  # 9.5/3
        (
            "wma_3",
            ["1", "2", "3", "1"],
            [None, None, V("2.333333333333333333333333333333333"), V("1.833333333333333333333333333333333")],
        ),  # 14/6, 11/6
        ("ema_3", ["1", "2", "3", "4"], [None, None, V(2), V(3)]),  # seed (1+2+3)/3; (2*4 + 2*2)/4
        ("rsi_2", ["1", "2", "1", "1"], [None, None, V(50), V(50)]),  # gain = loss = 1/2, then both 1/4
        ("rsi_2", ["1", "2", "3", "2"], [None, None, V(100), V(50)]),  # no loss yet; then gain = loss = 1/2
        ("rsi_2", ["5", "5", "5", "5"], [None, None, V(100), V(100)]),  # flat from the start: 0/0 is 100
    ],
)
def test_single_valued_by_hand(spec: str, series: list[str], expected: list[Decimal | None]) -> None:
    assert values_of(parse_spec(spec), flat_klines(series)) == [None if e is None else {"value": e} for e in expected]


def test_multi_valued_by_hand() -> None:
    assert values_of(parse_spec("bbands_2_1"), flat_klines(["1", "3", "3"])) == [
        None,
        {"lower": V(1), "middle": V(2), "upper": V(3)},  # population sd of (1, 3) is 1
        {"lower": V(3), "middle": V(3), "upper": V(3)},
    ]
    # fast EMA(1) is the close; slow EMA(2): seed 2, then (2*5 + 2)/3 = 4, (2*1 + 4)/3 = 2; MACD 1, 1, -1;
    # signal EMA(2) of MACD: seed (1 + 1)/2 = 1, then (2*(-1) + 1)/3 = -1/3
    assert values_of(parse_spec("macd_1_2_2"), flat_klines(["1", "3", "5", "1"])) == [
        None,
        None,
        {"macd": V(1), "signal": V(1), "hist": V(0)},
        {
            "macd": V(-1),
            "signal": V("-0.3333333333333333333333333333333333"),
            "hist": V("-0.6666666666666666666666666666666667"),
        },
    ]


def test_atr_by_hand() -> None:
    klines = [
        kline(MIDNIGHT_NS, ("2", "3", "1", "2")),  # no previous close: TR = 3 - 1 = 2
        kline(MIDNIGHT_NS + 60 * 10**9, ("4.5", "5", "4", "4.5")),  # gap up: TR = |5 - 2| = 3; seed (2 + 3)/2
        kline(MIDNIGHT_NS + 120 * 10**9, ("4", "4.5", "3.5", "4")),  # TR = max(1, 0, 1) = 1; (2.5 + 1)/2
    ]
    assert values_of(parse_spec("atr_2"), klines) == [None, {"value": V("2.5")}, {"value": V("1.75")}]


def test_vwap_accumulates_through_the_utc_day_and_restarts_at_midnight() -> None:
    start = MIDNIGHT_NS - 2 * HOUR_NS
    rows = [("2", "200"), ("0", "0"), ("0", "0"), ("1", "110"), ("3", "333")]  # 22:00, 23:00, 00:00, 01:00, 02:00
    klines = [kline(start + i * HOUR_NS, ("1", "1", "1", "1"), v, qv, "1h") for i, (v, qv) in enumerate(rows)]
    assert values_of(parse_spec("vwap"), klines) == [
        {"value": V(100)},
        {"value": V(100)},  # a quiet hour keeps the day's VWAP
        None,  # a new day with no volume yet has none
        {"value": V(110)},
        {"value": V("110.75")},  # 443 / 4
    ]


def test_vwap_of_daily_klines_is_each_klines_own() -> None:
    klines = [
        kline(MIDNIGHT_NS + i * INTERVAL_NS["1d"], ("1", "1", "1", "1"), "4", str(10 + i), "1d") for i in range(3)
    ]
    assert values_of(parse_spec("vwap"), klines) == [{"value": V("2.5")}, {"value": V("2.75")}, {"value": V(3)}]


# --- agreement with talipp ------------------------------------------------------------------------------------

Reference = list[dict[str, float] | None]


def _single(outputs: list[float | None]) -> Reference:
    return [None if v is None else {"value": v} for v in outputs]


def _ohlcv(k: Kline) -> OHLCV:
    return OHLCV(float(k.open), float(k.high), float(k.low), float(k.close), float(k.volume))


def _talipp_vwap(klines: list[Kline]) -> Reference:
    """talipp's VWAP weighs a typical price by volume and never resets; feeding it each kline's own VWAP as its
    price and restarting it every UTC day makes it the session VWAP of quote volume over volume."""
    out: list[float | None] = []
    for _, day in itertools.groupby(klines, key=lambda k: k.open_time // INTERVAL_NS["1d"]):
        vwap = ta.VWAP()
        for k in day:
            price = float(k.quote_volume / k.volume) if k.volume else 0.0
            vwap.add(OHLCV(price, price, price, price, float(k.volume)))
            out.append(vwap[-1])
    return _single(out)


def talipp_reference(spec: str, klines: list[Kline]) -> Reference:
    kind, *args = spec.split("_")
    n = int(args[0]) if args else 0
    close = [float(k.close) for k in klines]
    if kind == "bbands":
        bands = ta.BB(n, float(args[1]), input_values=close)
        return [None if b is None else {"lower": b.lb, "middle": b.cb, "upper": b.ub} for b in bands]
    if kind == "macd":
        macd = ta.MACD(n, int(args[1]), int(args[2]), input_values=close)
        return [
            None if m is None or m.signal is None else {"macd": m.macd, "signal": m.signal, "hist": m.histogram}
            for m in macd
        ]
    single: dict[str, Callable[[], list[float | None]]] = {
        "sma": lambda: list(ta.SMA(n, input_values=close)),
        "ema": lambda: list(ta.EMA(n, input_values=close)),
        "wma": lambda: list(ta.WMA(n, input_values=close)),
        "rsi": lambda: list(ta.RSI(n, input_values=close)),
        "atr": lambda: list(ta.ATR(n, input_values=[_ohlcv(k) for k in klines])),
    }
    return _talipp_vwap(klines) if kind == "vwap" else _single(single[kind]())


def error_floor(kind: str, close: Decimal) -> Decimal:
    """The smallest magnitude an error is measured against. MACD lines are differences of two prices: near a
    crossing they approach 0 while both floats carry errors relative to the price, so the price is the floor. RSI
    is on a 0..100 scale and after a long slide sits near 0 (4.6e-6 in the real-shaped series) where talipp's float
    carries ~1e-14 absolute error; 1 point is its floor (the 80-digit test below checks it tightly)."""
    return {"macd": close, "rsi": Decimal(1)}.get(kind, Decimal(0))


def relative_error(ours: Decimal, reference: float, floor: Decimal) -> Decimal:
    with decimal.localcontext(D80):
        ref = Decimal(reference)  # exact: the float's binary value
        scale = max(abs(ref), floor)
        return abs(ours - ref) / scale if scale else abs(ours - ref)


AGREEMENT_SPECS = [
    *DEFAULT_SPECS,
    "sma_7",
    "ema_9",
    "wma_5",
    "rsi_7",
    "macd_5_35_5",
    "bbands_10_2.5",
    "atr_5",
]


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("spec", AGREEMENT_SPECS)
def test_agrees_with_talipp_within_1e9_relative(spec: str, series: str) -> None:
    klines = SERIES[series]
    ours = values_of(parse_spec(spec), klines)
    reference = talipp_reference(spec, klines)
    assert [v is None for v in ours] == [r is None for r in reference]  # the same warm-up, the same gaps
    assert sum(v is not None for v in ours) > 1800
    # the documented precision: no emitted value carries more than 34 significant digits
    assert all(len(d.as_tuple().digits) <= 34 for value in ours if value for d in value.values())
    worst = max(
        relative_error(value[key], ref[key], error_floor(spec.split("_")[0], k.close))
        for value, ref, k in zip(ours, reference, klines, strict=True)
        if value is not None and ref is not None
        for key in value
    )
    assert worst <= Decimal("1e-9"), worst


# --- exactness --------------------------------------------------------------------------------------------------


def rounded(value: Fraction) -> Decimal:
    """The correctly rounded 34-digit value of a rational: an exact division rounds once."""
    return D34.divide(Decimal(value.numerator), Decimal(value.denominator))


@pytest.mark.parametrize("series", SERIES)
def test_windowed_values_are_the_correctly_rounded_exact_ones(series: str) -> None:
    """The running sums never drift: after 2,000 klines each value is the exact window mean rounded once."""
    klines = SERIES[series]
    x = [Fraction(k.close) for k in klines]
    sma, wma, bands = parse_spec("sma_20"), parse_spec("wma_20"), parse_spec("bbands_20_2")
    for i, k in enumerate(klines):
        s, w, b = sma.update(k), wma.update(k), bands.update(k)
        if i < 19:
            assert s is None and w is None and b is None
            continue
        window = x[i - 19 : i + 1]
        mean = sum(window, Fraction(0)) / 20
        assert s is not None and s.values["value"] == rounded(mean)
        assert w is not None and w.values["value"] == rounded(
            sum((j * v for j, v in enumerate(window, 1)), Fraction(0)) / 210
        )
        assert b is not None and b.values["middle"] == rounded(mean)
        variance = sum(((v - mean) ** 2 for v in window), Fraction(0)) / 20
        with decimal.localcontext(D80):
            sd = (Decimal(variance.numerator) / variance.denominator).sqrt()
            middle = Decimal(mean.numerator) / mean.denominator
            for key, exact in (("lower", middle - 2 * sd), ("upper", middle + 2 * sd)):
                assert abs(b.values[key] - exact) <= abs(exact) * Decimal("1e-32"), (i, key)


@pytest.mark.parametrize("series", SERIES)
def test_vwap_is_the_correctly_rounded_session_ratio(series: str) -> None:
    klines = SERIES[series]
    vwap = parse_spec("vwap")
    for day, group in itertools.groupby(klines, key=lambda k: k.open_time // INTERVAL_NS["1d"]):
        quote, volume = Fraction(0), Fraction(0)
        for k in group:
            quote, volume = quote + Fraction(k.quote_volume), volume + Fraction(k.volume)
            value = vwap.update(k)
            assert (value is None) == (volume == 0), (day, k.open_time)
            assert value is None or value.values["value"] == rounded(quote / volume)


def _hp_smooth(inputs: list[Decimal], n: int, alpha: Decimal) -> list[Decimal | None]:
    """Seeded smoothing at 80 digits: the SMA of the first n inputs, then prev + alpha * (x - prev)."""
    out: list[Decimal | None] = []
    with decimal.localcontext(D80):
        avg = Decimal(0)
        for i, x in enumerate(inputs):
            avg = sum(inputs[:n], Decimal(0)) / n if i == n - 1 else avg + alpha * (x - avg)
            out.append(avg if i >= n - 1 else None)
    return out


def high_precision(spec: str, klines: list[Kline]) -> list[Decimal | None]:
    kind, n = spec.split("_")[0], int(spec.split("_")[1])
    close = [k.close for k in klines]
    with decimal.localcontext(D80):
        if kind == "ema":
            return _hp_smooth(close, n, Decimal(2) / (n + 1))
        if kind == "atr":
            tr = [klines[0].high - klines[0].low] + [
                max(k.high - k.low, abs(k.high - p.close), abs(k.low - p.close)) for p, k in itertools.pairwise(klines)
            ]
            return _hp_smooth(tr, n, Decimal(1) / n)
        changes = [b - a for a, b in itertools.pairwise(close)]
        gains = _hp_smooth([max(c, Decimal(0)) for c in changes], n, Decimal(1) / n)
        losses = _hp_smooth([max(-c, Decimal(0)) for c in changes], n, Decimal(1) / n)
        rsi = [
            None if g is None or lo is None else Decimal(100) if lo == 0 else 100 * g / (g + lo)
            for g, lo in zip(gains, losses, strict=True)
        ]
        return [None, *rsi]


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("spec", ["ema_20", "rsi_14", "atr_14"])
def test_recursive_values_stay_within_a_few_units_of_the_34th_digit(spec: str, series: str) -> None:
    """Rounding each step to 34 digits does not accumulate: after 2,000 klines the values agree with an 80-digit
    computation to 32 digits."""
    klines = SERIES[series]
    ours = values_of(parse_spec(spec), klines)
    exact = high_precision(spec, klines)
    assert [v is None for v in ours] == [e is None for e in exact]
    for value, e in zip(ours, exact, strict=True):
        if value is not None and e is not None:
            assert abs(value["value"] - e) <= abs(e) * Decimal("1e-32"), (value, e)


def test_results_do_not_depend_on_the_callers_decimal_context() -> None:
    klines = SERIES["random_walk"][:300]
    expected = {spec: values_of(parse_spec(spec), klines) for spec in DEFAULT_SPECS}
    with decimal.localcontext(decimal.Context(prec=5, rounding=decimal.ROUND_DOWN)):
        assert {spec: values_of(parse_spec(spec), klines) for spec in DEFAULT_SPECS} == expected


# --- revisions ----------------------------------------------------------------------------------------------------

REVISION_SPECS = ["sma_5", "wma_5", "ema_5", "rsi_5", "macd_3_6_4", "bbands_5_2", "atr_5", "vwap"]
HOURLY = random_walk(60, seed=3, interval="1h", start=MIDNIGHT_NS - 5 * HOUR_NS)  # UTC days start at klines 5, 29, 53


def wrong_version(k: Kline, rng: random.Random, revision: int) -> Kline:
    """What a kline looked like before late trades changed it."""

    def nudge(value: Decimal) -> Decimal:
        return value + Decimal(rng.randint(-5000, 5000)) / 100

    return msgspec.structs.replace(
        k,
        high=nudge(k.high),
        low=nudge(k.low),
        close=nudge(k.close),
        volume=k.volume * rng.randint(0, 3),
        quote_volume=k.quote_volume * rng.randint(0, 3),
        revision=revision,
    )


@pytest.mark.parametrize("spec", REVISION_SPECS)
@settings(max_examples=30, deadline=None)
@given(corrections=st.dictionaries(st.integers(0, len(HOURLY) - 1), st.integers(1, 3), max_size=20), seed=st.integers())
def test_a_revised_latest_kline_replaces_it(spec: str, corrections: dict[int, int], seed: int) -> None:
    """Seeing revisions 0..r-1 of a kline before its final revision r gives exactly the values and state of seeing
    only revision r."""
    rng = random.Random(seed)
    stream, final = [], []
    for i, k in enumerate(HOURLY):
        revisions = corrections.get(i, 0)
        stream += [wrong_version(k, rng, r) for r in range(revisions)]
        k = msgspec.structs.replace(k, revision=revisions)
        stream.append(k)
        final.append(k)
    revised, clean = parse_spec(spec), parse_spec(spec)
    finals = {id(k) for k in final}
    emitted = [(k, revised.update(k)) for k in stream]
    assert [v for k, v in emitted if id(k) in finals] == feed(clean, final)
    assert revised.to_bytes() == clean.to_bytes()


@pytest.mark.parametrize("spec", REVISION_SPECS)
def test_older_klines_and_older_revisions_are_stale_and_change_nothing(spec: str) -> None:
    indicator = parse_spec(spec)
    feed(indicator, HOURLY[:29])
    latest = msgspec.structs.replace(HOURLY[29], revision=2)
    value = indicator.update(latest)
    assert value is not None
    state = indicator.to_bytes()
    for stale in (
        msgspec.structs.replace(HOURLY[27], revision=5),  # a correction of an older kline
        wrong_version(HOURLY[29], random.Random(1), 1),  # an older revision of the latest
    ):
        assert indicator.classify(stale) is Update.STALE
        assert indicator.update(stale) is None
        assert indicator.to_bytes() == state
    assert indicator.classify(latest) is Update.REPLACE  # a re-delivery recomputes the same value
    assert indicator.update(latest) == value
    assert indicator.to_bytes() == state
    assert indicator.classify(HOURLY[30]) is Update.APPEND


def test_compute_emits_what_a_lone_indicator_would() -> None:
    k0, k1 = flat_klines(["1", "3"])
    k1_revised = msgspec.structs.replace(k1, close=Decimal(5), revision=1)
    k0_late = msgspec.structs.replace(k0, close=Decimal(9), revision=1)
    values = compute("sma_2", [k0, k1, k1_revised, k0_late])
    assert [(v.open_time, v.revision, v.values) for v in values] == [
        (k1.open_time, 0, {"value": V(2)}),
        (k1.open_time, 1, {"value": V(3)}),  # the late correction of k0 is stale for it (a Series takes it)
    ]


# --- serialization ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", AGREEMENT_SPECS)
def test_a_state_restored_mid_series_continues_identically(spec: str) -> None:
    klines = SERIES["real_shaped"]
    original = parse_spec(spec)
    feed(original, klines[:1000])
    data = original.to_bytes()
    restored = from_bytes(data)
    assert restored == original and type(restored) is type(original)
    assert type(original).from_bytes(data) == original
    assert feed(restored, klines[1000:]) == feed(original, klines[1000:])
    assert restored.to_bytes() == original.to_bytes()


@pytest.mark.parametrize("spec", [*DEFAULT_SPECS, *(f"{kind}_5" for kind in ("sma", "wma", "rsi"))])
def test_a_copy_is_independent(spec: str) -> None:
    """``copy`` shares only immutable fields: updating either leaves the other as it was, and the copy goes on
    as the original would (a series keeps copies as snapshots)."""
    klines = SERIES["random_walk"][:80]
    original = parse_spec(spec)
    feed(original, klines[:40])
    snapshot = original.to_bytes()
    twin = original.copy()
    assert twin == original and type(twin) is type(original)
    feed(original, klines[40:60])
    assert twin.to_bytes() == snapshot
    feed(original, [msgspec.structs.replace(klines[59], close=klines[59].close + 1, revision=1)])  # a replace too
    assert twin.to_bytes() == snapshot
    restored = from_bytes(snapshot)
    assert feed(twin, klines[40:]) == feed(restored, klines[40:])
    assert twin.to_bytes() == restored.to_bytes()


@pytest.mark.parametrize("spec", DEFAULT_SPECS)
def test_the_workers_load_update_save_loop_equals_one_live_indicator(spec: str) -> None:
    klines = SERIES["random_walk"][:200]
    live, data, emitted = parse_spec(spec), parse_spec(spec).to_bytes(), []
    for k in klines:
        indicator = from_bytes(data)
        emitted.append(indicator.update(k))
        data = indicator.to_bytes()
    assert emitted == feed(live, klines)
    assert data == live.to_bytes()


def test_decimals_survive_serialization_digit_for_digit() -> None:
    ema = parse_spec("ema_3")
    feed(ema, flat_klines(["1", "2", "3", "1"]))  # (2*1 + 2*2)/4 = 1.5; then thirds
    feed(ema, [kline(MIDNIGHT_NS + 10**12, ("1", "1", "1", "1.0000000000000000000000000000000001"))])
    restored = from_bytes(ema.to_bytes())
    assert isinstance(ema, EMA) and isinstance(restored, EMA)
    assert len(ema.current.value.as_tuple().digits) == 34
    assert restored.current.value.as_tuple() == ema.current.value.as_tuple()
    assert restored.before.value.as_tuple() == ema.before.value.as_tuple()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xc1garbage", "does not decode"),
        (msgspec.msgpack.encode({"kind": "obv", "period": 3}), "does not decode"),
        (msgspec.msgpack.encode({"kind": "sma", "period": 0}), "from 1 to 10000"),
        (msgspec.msgpack.encode({"kind": "sma", "period": 2, "window": [["1", "2", "3"], 0]}), "3 items, more than"),
        (msgspec.msgpack.encode({"kind": "sma", "period": 3, "window": [["1", "2"], 1]}), "start 1 is outside"),
        (msgspec.msgpack.encode({"kind": "macd", "fast": 26, "slow": 12, "signal": 9}), "must be shorter"),
    ],
)
def test_corrupt_states_raise_a_state_error(data: bytes, fragment: str) -> None:
    with pytest.raises(IndicatorStateError, match=fragment):
        from_bytes(data)


def test_a_state_of_another_kind_is_refused_by_a_typed_decoder() -> None:
    with pytest.raises(IndicatorStateError, match="does not decode"):
        INDICATORS["sma"].from_bytes(parse_spec("rsi_14").to_bytes())


# --- registry and specs ---------------------------------------------------------------------------------------


def test_the_registry_names_are_the_serialization_tags_and_the_defaults_cover_it() -> None:
    assert all(kind_of(cls) == name for name, cls in INDICATORS.items())
    assert {spec.split("_")[0] for spec in DEFAULT_SPECS} == set(INDICATORS)


@pytest.mark.parametrize("spec", [*AGREEMENT_SPECS, "sma_1", "ema_10000", "bbands_20_0.5", "macd_1_2_1"])
def test_a_spec_is_the_canonical_name_of_its_indicator(spec: str) -> None:
    indicator = parse_spec(spec)
    assert indicator.name == spec
    fresh = indicator.initialize()
    assert fresh == parse_spec(spec) and fresh is not indicator


def test_initialize_forgets_the_history() -> None:
    sma = parse_spec("sma_2")
    feed(sma, flat_klines(["1", "2"]))
    assert sma.initialize().to_bytes() == parse_spec("sma_2").to_bytes() != sma.to_bytes()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("rsi_x", "'rsi_x': rsi period must be a whole number, got 'x'; write rsi_<period>"),
        ("rsi", "rsi takes 1 parameter(s), got 0; write rsi_<period>"),
        ("rsi_14_2", "rsi takes 1 parameter(s), got 2"),
        ("rsi__14", "rsi takes 1 parameter(s), got 2"),
        ("foo_3", "unknown indicator 'foo'; known: atr, bbands, ema, macd, rsi, sma, vwap, wma"),
        ("RSI_14", "unknown indicator 'RSI'"),
        ("", "unknown indicator ''"),
        ("rsi_0", "rsi period must be a whole number from 1 to 10000, got 0"),
        ("sma_10001", "from 1 to 10000, got 10001"),
        ("sma_2.5", "sma period must be a whole number, got '2.5'"),
        ("sma_-3", "must be a whole number, got '-3'"),
        ("sma_\uff11\uff12", "must be a whole number"),  # full-width digits pass str.isdigit()
        ("rsi_014", "'rsi_014' is not canonical: write 'rsi_14'"),
        ("macd_26_12_9", "macd fast period 26 must be shorter than its slow period 12"),
        ("macd_12_12_9", "must be shorter"),
        ("macd_12_26", "macd takes 3 parameter(s), got 2; write macd_<fast>_<slow>_<signal>"),
        ("bbands_20_0", "bbands multiplier must be a decimal number greater than 0"),
        ("bbands_20_-2", "bbands multiplier must be a decimal number such as 2 or 2.5, got '-2'"),
        ("bbands_20_1e1", "decimal number such as 2 or 2.5, got '1e1'"),
        ("bbands_20_2.0", "write 'bbands_20_2'"),
        ("bbands_20", "bbands takes 2 parameter(s), got 1; write bbands_<period>_<multiplier>"),
        ("vwap_1", "vwap takes 0 parameter(s), got 1; write vwap"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, fragment: str) -> None:
    with pytest.raises(IndicatorSpecError) as caught:
        parse_spec(spec)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MarketIngestorError)


def test_constructing_with_a_bad_parameter_fails_too() -> None:
    with pytest.raises(IndicatorSpecError, match="sma period must be a whole number from 1 to 10000"):
        SMA(period=0)


# --- input errors ---------------------------------------------------------------------------------------------


def test_an_open_kline_is_refused() -> None:
    sma = parse_spec("sma_2")
    with pytest.raises(IndicatorInputError, match="is not closed"):
        sma.update(kline(MIDNIGHT_NS, ("1", "1", "1", "1"), closed=False))
    assert sma.last_open_time is None


@pytest.mark.parametrize(("spec", "digits"), [("bbands_2_2", 150), ("sma_2", 300)])
def test_digits_beyond_exact_arithmetic_raise_and_leave_the_state_unchanged(spec: str, digits: int) -> None:
    """Updates are atomic: the window and sums are untouched when the arithmetic fails half-way (for bbands the
    sum fits in 200 digits and the square does not)."""
    indicator = parse_spec(spec)
    feed(indicator, flat_klines(["1", "2", "3"]))
    state = indicator.to_bytes()
    huge = "1" * (digits // 2) + "." + "1" * (digits // 2)
    with pytest.raises(IndicatorInputError, match="beyond exact decimal arithmetic"):
        indicator.update(kline(MIDNIGHT_NS + 10**12, (huge, huge, huge, huge)))
    assert indicator.to_bytes() == state
