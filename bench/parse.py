"""Parser throughput: trade frames/s per exchange on one core (decode + normalize to Decimal events).

    .venv/bin/python bench/parse.py [--frames 200000] [--exchange NAME ...]

Frames are realistic: each exchange's simulator dialect renders them in the exchange's real wire format (one
trade per frame, the worst case for per-frame overhead), for 20 symbols, with the instrument listing loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from market_ingestor.ingestor.exchanges import REGISTRY, ParseContext, get_spec
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.simulator.dialect import SimInstrument, SimTrade

GOALS = {"binance": 500_000}
DEFAULT_GOAL = 300_000
BASES = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "DOT", "LTC", "LINK", "AVAX"]


def dialect_of(name: str):  # type: ignore[no-untyped-def]
    import importlib

    return importlib.import_module(f"market_ingestor.simulator.{name}").DIALECT


def frames_for(name: str, count: int) -> tuple[list[str], InstrumentRegistry]:
    dialect = dialect_of(name)
    instruments = [
        SimInstrument(base, quote, Decimal("0.01"), Decimal("0.0001")) for base in BASES for quote in ("USDT", "USD")
    ]
    spec = get_spec(name)
    registry = InstrumentRegistry(spec.parse_instruments(dialect.render_instruments(instruments)))
    natives = [dialect.native(instrument) for instrument in instruments]
    frames = []
    for n in range(count):
        trade = SimTrade(1_000_000 + n, Decimal("27123.45") + n % 100, Decimal("0.0123"), "buy", 1_700_000_000 * 10**9)
        frames.extend(dialect.render_trades(natives[n % len(natives)], [trade]))
    return frames, registry


def measure(name: str, count: int) -> tuple[float, int]:
    frames, registry = frames_for(name, count)
    parse = get_spec(name).parse
    ctx = ParseContext(registry, 1_700_000_000 * 10**9)
    events = 0
    for frame in frames[:1000]:  # warm caches
        parse(frame, ctx)
    started = time.perf_counter()
    for frame in frames:
        events += len(parse(frame, ctx))
    elapsed = time.perf_counter() - started
    return len(frames) / elapsed, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--exchange", action="append", choices=sorted(REGISTRY))
    args = parser.parse_args()
    print(f"{'exchange':<10}{'frames/s':>14}{'events':>10}{'goal':>12}")
    for name in args.exchange or list(REGISTRY):
        rate, events = measure(name, args.frames)
        goal = GOALS.get(name, DEFAULT_GOAL)
        print(f"{name:<10}{rate:>14,.0f}{events:>10}{goal:>12,}  {'met' if rate >= goal else 'below goal'}")


if __name__ == "__main__":
    main()
