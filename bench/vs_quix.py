"""Our worker against Quix Streams 3.28 on the same trades, in one run: 1m tumbling OHLCV, rates side by side.

    make install bench-venv
    .venv/bin/python bench/vs_quix.py [--count 1000000] [--instruments 1000] [--span-minutes 240]
        [--max-seconds 90] [--guarantee at_least_once|exactly_once] [--keep]

The trades are bench/klines.py's (five exchanges, random-walk prices, 5% up to 0.5 s out of order, ``--span-minutes``
of event time). Each side reads its natural input, pre-filled once before either starts: the peer one record per
trade (``{stem}.trades``), ours batch records of the same trades (``{stem}.market.trades``, through our publisher,
see docs/topics.md). Our side is ONE ``market-ingestor worker`` with ``intervals = ["1m"]`` and no indicators; the
peer is ONE bench/quix_peer.py process (tumbling 60 s window on the trade's ts, 1 s grace, Decimal reduce,
``.final()``), its commit interval 1 s like Faust's. Both are measured the same way: the group's committed
offsets polled every 0.2 s, converted to trades (ours: trades before each committed offset of its batch records),
trades/s from the first poll that saw a commit to the one that saw everything (or ``--max-seconds`` later), CPU
per trade over that span, peak RSS (VmHWM). The peer runs first, then ours, so neither shares the cores with the
other. Then the closed 1m klines of both are compared with each other and with a plain Decimal aggregation of the
trades (open, high, low, close, volume, trade count) on every window both closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from aiokafka import AIOKafkaConsumer, TopicPartition

from klines import PARTITIONS, Offsets, bus_config, host_busy_s, prefill, replay_trades, say, throughput
from market_ingestor.bus.records import split_events
from market_ingestor.bus.topics import Topics
from market_ingestor.devstack import ensure_stack
from peer_trades import PeerProcess, measure_committed, read_klines, reference_klines
from peer_trades import prefill as prefill_peer

GOAL_RATIO = 10.0


async def run_ours(offsets: Offsets, prefix: str, total: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """bench/klines.py's throughput measurement, on 1m klines alone."""
    settings = argparse.Namespace(
        streams={"intervals": '["1m"]', "indicators": "[]"}, max_seconds=args.max_seconds, profile=0
    )
    row = await throughput(offsets, prefix, args.guarantee, total, tmp, settings)
    return {**row, "side": f"market-ingestor worker ({args.guarantee})", "input": "batch records"}


async def run_peer(bootstrap: str, stem: str, total: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    guarantee = args.guarantee.replace("_", "-")
    peer = PeerProcess(bootstrap, f"{stem}.trades", f"{stem}.quix-klines", f"{stem}-quix", tmp / "quix",
                       "--processing-guarantee", guarantee)  # fmt: skip
    host0 = host_busy_s()
    try:
        measured = await measure_committed(peer, bootstrap, f"{stem}-quix", f"{stem}.trades", total, args.max_seconds)
        others = host_busy_s() - host0
    finally:
        code = peer.stop()
    return {
        "side": f"Quix Streams 3.28 ({guarantee})",
        "input": "one record per trade",
        "committed": measured.committed,
        "complete": "yes" if measured.complete else "no (cap)",
        "trades/s": measured.trades_per_s,
        "cpu %": measured.cpu_pct,
        "cpu us/trade": measured.cpu_us_per_trade,
        "others %": 100 * others / max(measured.span_s, 1e-9) - measured.cpu_pct,
        "rss MB": measured.peak_rss_mb,
        "exit": str(code),
    }


async def our_klines(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Our closed 1m klines (the latest revision of each window), as the peer's comparison wants them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    for raw in split_events(record.value or b"[]"):
                        kline = json.loads(raw)
                        if kline["closed"] and kline["interval"] == "1m":
                            window = (f"{kline['exchange']}.{kline['symbol']}", kline["open_time"])
                            held = latest.get(window)
                            if held is None or kline["revision"] >= held["revision"]:
                                latest[window] = kline
        return list(latest.values())
    finally:
        await consumer.stop()


def agreement(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], reference: dict[Any, Any]) -> dict[str, Any]:
    fields = ("open", "high", "low", "close", "volume")

    def by_window(klines: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        return {(f"{k['exchange']}.{k['symbol']}", k["open_time"]): k for k in klines if k.get("trade_count", 1)}

    mine, peer = by_window(ours), by_window(theirs)
    both = sorted(set(mine) & set(peer))

    def same(kline: dict[str, Any], other: dict[str, Any]) -> bool:
        return kline["trade_count"] == other["trade_count"] and all(
            Decimal(kline[field]) == Decimal(other[field]) for field in fields
        )

    differ = [window for window in both if not same(mine[window], peer[window])]
    wrong_ours = [w for w in mine if w in reference and not same(mine[w], reference[w])]
    return {
        "our closed windows with trades": len(mine),
        "peer closed windows": len(peer),
        "closed by both": len(both),
        "differ between the two": len(differ),
        "ours differing from the Decimal reference": len(wrong_ours),
        "first differences": [(w, mine[w], peer[w]) for w in differ[:2]],
    }


def table(rows: list[dict[str, Any]]) -> None:
    columns = ["side", "input", "committed", "complete", "trades/s", "cpu %", "cpu us/trade", "others %", "rss MB",
               "exit"]  # fmt: skip

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(cell(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))


async def run(args: argparse.Namespace) -> None:
    bootstrap = ensure_stack().kafka_bootstrap
    stem = f"bvq{uuid.uuid4().hex[:6]}"
    prefix = f"{stem}."
    offsets = Offsets(bootstrap)
    await offsets.admin.start()
    records = list(replay_trades(args.count, args.instruments, args.span_minutes))
    try:
        started = time.perf_counter()
        await prefill(bus_config(bootstrap, prefix), args)  # reads count, instruments, span_minutes
        total = await offsets.end(prefix + Topics.TRADES)
        batch_records = offsets.counts_of(prefix + Topics.TRADES).records()
        say(f"ours: {total:,} trades in {batch_records:,} batch records ({time.perf_counter() - started:.1f}s)")
        started = time.perf_counter()
        await prefill_peer(bootstrap, f"{stem}.trades", records)
        say(f"peer: {len(records):,} records, one per trade ({time.perf_counter() - started:.1f}s)")
        with tempfile.TemporaryDirectory(prefix="bench-vs-quix-") as tmp:
            peer = await run_peer(bootstrap, stem, len(records), Path(tmp), args)
            say(f"peer: {peer['trades/s']:,.0f} trades/s")
            ours = await run_ours(offsets, prefix, total, Path(tmp), args)
            say(f"ours: {ours['trades/s']:,.0f} trades/s")
        compared = agreement(
            await our_klines(bootstrap, prefix + Topics.KLINES),
            await read_klines(bootstrap, f"{stem}.quix-klines"),
            reference_klines(records),
        )
    finally:
        if not args.keep:
            names = [name for name in await offsets.admin.list_topics() if stem in name]
            if names:
                await offsets.admin.delete_topics(names)
        await offsets.close()
    ratio = ours["trades/s"] / max(peer["trades/s"], 1e-9)
    print(f"\n1m tumbling OHLCV, {args.count:,} trades of {args.instruments:,} instruments over {args.span_minutes:g} "
          f"min, 12 partitions, one process each, {args.guarantee}")  # fmt: skip
    table([peer, ours])
    print(f"ratio ours/peer: {ratio:.1f}x trades/s, {peer['cpu us/trade'] / ours['cpu us/trade']:.1f}x less CPU per "
          f"trade (goal >= {GOAL_RATIO:g}x: {'met' if ratio >= GOAL_RATIO else 'MISSED'})")  # fmt: skip
    for name, value in compared.items():
        print(f"  {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--instruments", type=int, default=1_000)
    parser.add_argument("--span-minutes", type=float, default=240.0)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once")
    parser.add_argument("--keep", action="store_true", help="keep the topics")
    started = time.perf_counter()
    asyncio.run(run(parser.parse_args()))
    say(f"bench ran {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
