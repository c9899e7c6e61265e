"""Pure kline aggregation throughput: trades/s through ``InstrumentKlines.apply`` on one core (no Kafka, no I/O).

    .venv/bin/python bench/klines_pure.py [--trades 1000000] [--instruments 20] [--interval 1m ...]

The stream is realistic for a busy market: 20 instruments interleaved, ~50 trades/s each in event time (so windows
close and klines are emitted as they would live), prices on a random walk with exchange-style fixed decimals,
quantities with 5-8 decimals, 5% of trades out of order within the grace period. Trades are built before the
clock starts (decoding is the parser benchmark's business). Also reports the state size (``to_bytes``) per
instrument and the cost of ``to_bytes``/``from_bytes``, which the worker pays once per batch.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from market_ingestor.model import Trade
from market_ingestor.streams.klines import DEFAULT_INTERVALS, InstrumentKlines, KlineSettings, exact_context

GOAL = 300_000
START_NS = 1_700_000_000 * 10**9


def make_trades(count: int, instruments: int, seed: int = 7) -> list[Trade]:
    rng = random.Random(seed)
    prices = [Decimal(f"{27000 + rng.randint(-500, 500)}.{rng.randint(0, 99):02d}") for _ in range(997)]
    qtys = [Decimal(rng.randint(1, 10**places)).scaleb(-places) for places in (rng.randint(5, 8) for _ in range(991))]
    clock = [START_NS] * instruments
    trades = []
    for n in range(count):
        index = n % instruments
        clock[index] += rng.randint(0, 40_000_000)  # ~50 trades/s per instrument
        ts = clock[index] - (rng.randint(0, 500_000_000) if rng.random() < 0.05 else 0)  # within grace
        trades.append(
            Trade("binance", f"SYM{index}USDT", str(n), prices[n % 997], qtys[n % 991], "buy" if n & 1 else "sell",
                  ts, ts)
        )  # fmt: skip
    return trades


def run(trades: list[Trade], settings: KlineSettings, exact: bool) -> tuple[float, int, dict[str, InstrumentKlines]]:
    states = {t.symbol: InstrumentKlines.new(t.exchange, t.symbol, settings) for t in trades}
    emitted = 0
    started = time.perf_counter()
    if exact:
        with exact_context():  # as the worker runs a batch
            for position, trade in enumerate(trades):
                emitted += len(states[trade.symbol].apply(trade, position).klines)
    else:
        for position, trade in enumerate(trades):
            emitted += len(states[trade.symbol].apply(trade, position).klines)
    elapsed = time.perf_counter() - started
    return len(trades) / elapsed, emitted, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--interval", action="append", help=f"default: {' '.join(DEFAULT_INTERVALS)}")
    args = parser.parse_args()
    settings = KlineSettings(intervals=tuple(args.interval or DEFAULT_INTERVALS))
    trades = make_trades(args.trades, args.instruments)
    span_s = (max(t.ts for t in trades) - START_NS) / 1e9
    print(f"{len(trades):,} trades, {args.instruments} instruments, {span_s / 60:.0f} min of event time, "
          f"intervals {' '.join(settings.intervals)}")  # fmt: skip
    run(trades[:20_000], settings, True)  # warm up
    for label, exact in (("apply, batch in exact_context()", True), ("apply, context switched per call", False)):
        rate, emitted, states = run(trades, settings, exact)
        verdict = "met" if rate >= GOAL else "below goal"
        print(f"{label:<34}{rate:>12,.0f} trades/s  ({emitted:,} klines emitted; goal {GOAL:,}: {verdict})")
    sizes = [len(state.to_bytes()) for state in states.values()]
    state = next(iter(states.values()))
    blob = state.to_bytes()
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        state.to_bytes()
    encode_us = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(rounds):
        InstrumentKlines.from_bytes(blob, settings)
    decode_us = (time.perf_counter() - started) / rounds * 1e6
    print(f"state per instrument: {min(sizes):,}..{max(sizes):,} bytes; to_bytes {encode_us:.1f} us, "
          f"from_bytes {decode_us:.1f} us")  # fmt: skip


if __name__ == "__main__":
    main()
