"""What a Prometheus scrape costs a service. Fills ingest's metrics as a busy instance would (``--symbols``
instruments over the five exchanges, every event type, gaps and latency samples; at most ``metrics.max_symbols``
get a label of their own), times the rendering, then scrapes the real metrics server over HTTP while a task on
the same event loop measures how late its 1 ms sleeps wake up (the stall a scrape causes the service), and
times the per-event counting on the hot path.

    .venv/bin/python bench/metrics.py [--symbols 1000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import aiohttp

from market_ingestor.ingestor import metrics
from market_ingestor.observability import SYMBOLS, Health, MetricsServer, exposition

EXCHANGES = ("binance", "okx", "bybit", "coinbase", "kraken")
TYPES = ("Trade", "Quote", "BookDelta", "BookSnapshot")


def fill(symbols: int) -> None:
    SYMBOLS.configure(1_000)
    for n in range(symbols):
        exchange = EXCHANGES[n % len(EXCHANGES)]
        labels = SYMBOLS(exchange, f"S{n:05d}USDT")
        metrics.FRAMES.counts[labels] += 100
        for kind in TYPES:
            metrics.EVENTS.counts[(*labels, kind)] += 100
        metrics.SEQUENCE_GAPS.labels(*labels, "book").inc()
    for exchange in EXCHANGES:
        for n in range(1_000):
            metrics.INGEST_LATENCY.labels(exchange).observe(n / 10_000)


async def loop_stalls(scrapes: int) -> list[float]:  # float-ok: durations
    stalls: list[float] = []  # float-ok: durations

    async def ticker() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - start - 0.001)

    async with MetricsServer("127.0.0.1", 0, lambda: Health(True), "bench") as server, aiohttp.ClientSession() as http:
        task = asyncio.create_task(ticker())
        for _ in range(scrapes):
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                await response.read()
        task.cancel()
    return stalls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=1_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    fill(args.symbols)
    timings = []
    for _ in range(args.scrapes):
        start = time.perf_counter()
        body, _ = exposition(None)
        timings.append(time.perf_counter() - start)
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(f"{args.symbols} symbols ({len(SYMBOLS)} with a label of their own): {series} series, {len(body) >> 10} KiB")
    print(f"render: p50 {statistics.median(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")
    stalls = asyncio.run(loop_stalls(args.scrapes))
    print(f"event-loop stall while scraped over HTTP: p50 {statistics.median(stalls) * 1000:.1f} ms, "
          f"max {max(stalls) * 1000:.1f} ms (1 ms sleeps: how late they woke)")  # fmt: skip
    counts, labels = metrics.EVENTS.counts, ("binance", "S00000USDT", "Trade")
    n = 1_000_000
    start = time.perf_counter()
    for _ in range(n):
        counts[labels] += 1
    print(f"counting one event (a Tally increment): {(time.perf_counter() - start) / n * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
