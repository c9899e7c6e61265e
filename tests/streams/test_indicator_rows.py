"""The indicator agent's RocksDB row (pure, no Kafka): one series per interval, rows of the previous per-indicator
format load and are rewritten interval by interval, and the row of the default configuration stays small."""

from __future__ import annotations

import random
from decimal import Decimal

import msgspec

from market_ingestor.model import Kline
from market_ingestor.streams.indicators import Row
from market_ingestor.streams.windows import parse_interval
from market_ingestor.tables.indicators import DEFAULT_SPECS, compute, parse_spec
from market_ingestor.tables.indicators.series import horizon

START = 1_704_067_200 * 10**9  # 2024-01-01T00:00Z
INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")
SPECS = tuple(DEFAULT_SPECS)


def walk(interval: str, count: int, seed: int = 1) -> list[Kline]:
    rng, step, price, out = random.Random(seed), parse_interval(interval).ns, Decimal("42000.00"), []
    for i in range(count):
        close = price + Decimal(rng.randint(-2500, 2500)) / 100
        high, low = max(price, close) + Decimal(rng.randint(0, 900)) / 100, min(price, close) - Decimal(9)
        volume = Decimal(rng.randint(1, 10**6)) / 10**4
        quote = (volume * low).quantize(Decimal("0.000001"))
        out.append(
            Kline(
                "binance", "BTCUSDT", interval, START + i * step, START + (i + 1) * step - 1, price, high, low, close,
                volume, quote, 100, volume / 2, quote / 2, None, None, quote / volume, True,
            )
        )  # fmt: skip
        price = close
    return out


def size(interval: str) -> int:
    return horizon(parse_interval(interval).ns, 600_000)


def old_row(klines: dict[str, list[Kline]]) -> bytes:
    """A row as the previous version of the agent wrote it: interval -> indicator -> state bytes."""
    row = {}
    for interval, series in klines.items():
        states = {spec: parse_spec(spec) for spec in SPECS}
        for kline in series:
            for state in states.values():
                state.update(kline)
        row[interval] = {spec: state.to_bytes() for spec, state in states.items()}
    return msgspec.msgpack.encode(row)


def test_a_row_of_the_previous_format_loads_and_is_rewritten_interval_by_interval() -> None:
    klines = {interval: walk(interval, 60) for interval in ("1m", "5m")}
    stored = old_row({interval: series[:50] for interval, series in klines.items()})
    row = Row(stored, SPECS)
    emitted = []
    for kline in klines["1m"][50:]:
        emitted += row.get("1m", size("1m")).update(kline)
    # The 1m values go on exactly as one indicator fed the whole series would have them; 5m is untouched.
    want = [v for spec in SPECS for v in compute(spec, klines["1m"]) if v.open_time >= klines["1m"][50].open_time]
    assert sorted(emitted, key=lambda v: (v.name, v.open_time)) == sorted(want, key=lambda v: (v.name, v.open_time))
    rewritten = msgspec.msgpack.decode(row.to_bytes())
    assert isinstance(rewritten["1m"], bytes) and isinstance(rewritten["5m"], dict)
    again = Row(row.to_bytes(), SPECS)
    nxt = walk("1m", 61)[60]
    assert again.get("1m", size("1m")).update(nxt) == [
        v for spec in SPECS for v in compute(spec, [*klines["1m"], nxt]) if v.open_time == nxt.open_time
    ]
    # The 5m states of the previous format still load and go on.
    assert again.get("5m", size("5m")).update(klines["5m"][50]) == [
        v for spec in SPECS for v in compute(spec, klines["5m"][:51]) if v.open_time == klines["5m"][50].open_time
    ]


def test_the_row_of_the_default_configuration_stays_a_few_kilobytes() -> None:
    """1,000 instruments x 6 intervals: the rows must stay small (RocksDB, and one row decoded per batch)."""
    klines = {interval: walk(interval, 300) for interval in INTERVALS}
    row = Row(None, SPECS)
    for interval, series in klines.items():
        for kline in series:
            row.get(interval, size(interval)).update(kline)
    new, old = len(row.to_bytes()), len(old_row(klines))
    assert [len(row.series[i].history) for i in INTERVALS] == [12, 4, 3, 3, 3, 3]
    assert new < old + 3000 < 16_000, (new, old)
