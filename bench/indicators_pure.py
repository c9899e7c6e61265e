"""Indicator throughput on one core, pure (no I/O): updates/s per indicator and for the default set.

    .venv/bin/python bench/indicators_pure.py [--klines 20000] [--spec SPEC ...]

Klines are a BTC-like random walk of 1m candles (prices at 2 decimals, volumes at 4), closed, in order. Three
numbers per indicator:

- ``update``: ``indicator.update(kline)`` alone, the state kept in memory;
- ``revised``: every kline applied twice, the second time as a revision (the replace path);
- ``cycle``: what the stream worker does per kline with a RocksDB-backed state, minus the store itself:
  ``from_bytes(state)``, ``update``, ``to_bytes()``.

The ``set`` lines run every requested indicator on each kline in turn, the way the worker interleaves them: per
indicator update, and klines/s through the whole set (a minute boundary closes every 1m kline at once, so this is
how many instruments one core brings up to date per second).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from market_ingestor.indicators import DEFAULT_SPECS, from_bytes, parse_spec
from market_ingestor.model import Kline

MINUTE_NS = 60 * 10**9


def klines(count: int, seed: int = 1) -> list[Kline]:
    rng, cent, price, out = random.Random(seed), Decimal("0.01"), Decimal("42000.00"), []
    for i in range(count):
        close = price + cent * rng.randint(-2500, 2500)
        high, low = max(price, close) + cent * rng.randint(0, 900), min(price, close) - cent * rng.randint(0, 900)
        volume = Decimal(rng.randint(1, 10**6)).scaleb(-4)
        quote = (volume * (low + high) / 2).quantize(Decimal("0.000001"))
        open_time = 1_700_000_040 * 10**9 + i * MINUTE_NS
        out.append(
            Kline(
                exchange="binance",
                symbol="BTCUSDT",
                interval="1m",
                open_time=open_time,
                close_time=open_time + MINUTE_NS - 1,
                open=price,
                high=high,
                low=low,
                close=close,
                volume=volume,
                quote_volume=quote,
                trade_count=100,
                taker_buy_volume=volume / 2,
                taker_buy_quote_volume=quote / 2,
                first_trade_id=None,
                last_trade_id=None,
                vwap=quote / volume,
                closed=True,
            )
        )
        price = close
    return out


def rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def measure(spec: str, series: list[Kline]) -> tuple[float, float, float]:
    def updates() -> None:
        indicator = parse_spec(spec)
        for k in series:
            indicator.update(k)

    revisions = [msgspec.structs.replace(k, revision=1) for k in series]

    def revised() -> None:
        indicator = parse_spec(spec)
        for k, r in zip(series, revisions, strict=True):
            indicator.update(k)
            indicator.update(r)

    def cycles() -> None:
        state = parse_spec(spec).to_bytes()
        for k in series:
            indicator = from_bytes(state)
            indicator.update(k)
            state = indicator.to_bytes()

    return rate(len(series), updates), rate(2 * len(series), revised), rate(len(series), cycles)


def measure_set(specs: list[str], series: list[Kline]) -> tuple[float, float]:
    """(updates/s, cycles/s) with every indicator applied to each kline in turn."""
    indicators = [parse_spec(spec) for spec in specs]

    def updates() -> None:
        for k in series:
            for indicator in indicators:
                indicator.update(k)

    states = [parse_spec(spec).to_bytes() for spec in specs]

    def cycles() -> None:
        for k in series:
            for i, state in enumerate(states):
                indicator = from_bytes(state)
                indicator.update(k)
                states[i] = indicator.to_bytes()

    count = len(series) * len(specs)
    return rate(count, updates), rate(count, cycles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--klines", type=int, default=20_000)
    parser.add_argument("--spec", action="append", help="an indicator spec; repeatable (default: the default set)")
    args = parser.parse_args()
    specs = args.spec or list(DEFAULT_SPECS)
    series = klines(args.klines)
    measure_set(specs, series[:500])  # warm caches and decoders
    print(f"{'indicator':<14}{'update/s':>12}{'revised/s':>12}{'cycle/s':>12}")
    for spec in specs:
        update, revised, cycle = measure(spec, series)
        print(f"{spec:<14}{update:>12,.0f}{revised:>12,.0f}{cycle:>12,.0f}")
    update, cycle = measure_set(specs, series)
    print(f"{'set':<14}{update:>12,.0f}{'':>12}{cycle:>12,.0f}  per indicator update, {len(specs)} indicators")
    print(f"{'':<14}{update / len(specs):>12,.0f}{'':>12}{cycle / len(specs):>12,.0f}  klines/s through the whole set")


if __name__ == "__main__":
    main()
