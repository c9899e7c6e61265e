"""Bus throughput and latency: normalized trades through each bus adapter on the dev stack.

    .venv/bin/python bench/bus.py [--bus kafka|nats|both] [--count 500000] [--rate 20000] [--seconds 5]

For each bus it measures, on fresh topics:
- publish: trades/s from one process, encoding included, until the broker acknowledged the last one;
- consume: trades/s read back (batch records of trades) and decoded by one subscriber of a new group;
- latency: with trades published at a steady ``--rate``, the time from ``publish()`` to a consumer in another
  process decoding the trade, p50/p99 (the trade's ``recv_ts`` carries the publish time).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from market_ingestor.bus import Bus, TopicSpec, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.records import BatchDecoder
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Trade, encode

SYMBOLS = [f"SYM{n}USDT" for n in range(50)]
trade_decoder = BatchDecoder(Trade)


def make_trades(count: int) -> list[Trade]:
    price = Decimal("27123.45")
    return [
        Trade("binance", SYMBOLS[n % len(SYMBOLS)], str(n), price + n % 100, Decimal("0.00123"), "buy", n, n)
        for n in range(count)
    ]


def bus_config(kind: str) -> BusConfig:
    info = ensure_stack()
    return BusConfig(
        kind=kind,  # type: ignore[arg-type]
        kafka=KafkaConfig(bootstrap=info.kafka_bootstrap, partitions=12),
        nats=NatsConfig(url=info.nats_url),
    )


async def new_topic(bus: Bus, kind: str) -> str:
    topic = f"bench{kind}{uuid.uuid4().hex[:8]}.market.trades"  # a hot topic: batch records
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600, partitions=12)])
    return topic


async def publish_all(bus: Bus, topic: str, trades: list[Trade]) -> float:
    publisher = bus.publisher()
    await publisher.start()
    started = time.perf_counter()
    for trade in trades:
        await publisher.publish(topic, bus_key(trade), encode(trade), event_id(trade))
    await publisher.flush()
    elapsed = time.perf_counter() - started
    await publisher.stop()
    return len(trades) / elapsed


async def consume_all(bus: Bus, topic: str, count: int) -> float:
    subscriber = bus.subscriber([topic], f"bench-{uuid.uuid4().hex[:6]}")
    await subscriber.start()
    received = 0
    started = None
    while received < count:
        batch = await subscriber.fetch(max_records=5000, timeout_s=10.0)
        if not batch:
            raise RuntimeError(f"consumer stalled at {received}/{count}")
        started = started or time.perf_counter()
        for delivery in batch:
            received += len(trade_decoder.decode(delivery.value))  # a batch record of trades
        await subscriber.commit(batch)
    elapsed = time.perf_counter() - (started or 0)
    await subscriber.stop()
    return received / elapsed


def latency_consumer(
    kind: str, topic: str, count: int, ready: multiprocessing.Event, out: multiprocessing.Queue
) -> None:
    async def run() -> list[int]:
        subscriber = open_bus(bus_config(kind)).subscriber([topic], f"lat-{uuid.uuid4().hex[:6]}")
        await subscriber.start()
        ready.set()
        latencies: list[int] = []
        while len(latencies) < count:
            # Generous until the first record (group join), then 3 s of silence means the publisher is done.
            batch = await subscriber.fetch(max_records=5000, timeout_s=3.0 if latencies else 30.0)
            if not batch:
                break
            now = time.time_ns()
            for delivery in batch:
                for trade in trade_decoder.decode(delivery.value):  # a batch record of trades
                    # Warm-up trades (group join, first fetch) are delivered but not counted.
                    if not trade.trade_id.startswith("w"):
                        latencies.append(now - trade.recv_ts)
            await subscriber.commit(batch)
        await subscriber.stop()
        return latencies

    out.put(asyncio.run(run()))


async def paced_publish(bus: Bus, topic: str, rate: int, seconds: float, warmup_s: float = 2.0) -> int:
    """Publishes at ``rate`` for ``warmup_s`` (trade ids "w…", not measured) and then ``seconds``."""
    publisher = bus.publisher()
    await publisher.start()
    sent = measured = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < warmup_s + seconds:
        due = int(elapsed * rate)
        while sent < due:
            symbol = SYMBOLS[sent % len(SYMBOLS)]
            now = time.time_ns()
            warm = elapsed < warmup_s
            trade_id = f"w{sent}" if warm else str(sent)
            trade = Trade("binance", symbol, trade_id, Decimal("1.5"), Decimal("2"), "sell", now, now)
            await publisher.publish(topic, bus_key(trade), encode(trade), event_id(trade))
            sent += 1
            measured += not warm
        await asyncio.sleep(0.001)
    await publisher.stop()
    return measured


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


async def bench(kind: str, count: int, rate: int, seconds: float) -> dict[str, float]:
    bus = open_bus(bus_config(kind))
    topic = await new_topic(bus, kind)
    publish_rate = await publish_all(bus, topic, make_trades(count))
    consume_rate = await consume_all(bus, topic, count)

    latency_topic = await new_topic(bus, kind)
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    expected = int(rate * seconds)
    consumer = ctx.Process(target=latency_consumer, args=(kind, latency_topic, expected, ready, out))
    consumer.start()
    await asyncio.get_running_loop().run_in_executor(None, ready.wait)
    sent = await paced_publish(bus, latency_topic, rate, seconds)
    latencies = await asyncio.get_running_loop().run_in_executor(None, out.get)
    consumer.join()
    return {
        "publish/s": publish_rate,
        "consume/s": consume_rate,
        "paced rate": rate,
        "received": len(latencies) / max(sent, 1),
        "p50 ms": statistics.median(latencies) / 1e6 if latencies else float("nan"),
        "p99 ms": percentile(latencies, 0.99) if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", choices=["kafka", "nats", "both"], default="both")
    parser.add_argument("--count", type=int, default=500_000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    kinds = ["kafka", "nats"] if args.bus == "both" else [args.bus]
    rows = {kind: asyncio.run(bench(kind, args.count, args.rate, args.seconds)) for kind in kinds}
    columns = list(next(iter(rows.values())))
    print(f"{'bus':<6}" + "".join(f"{c:>14}" for c in columns))
    for kind, row in rows.items():
        print(f"{kind:<6}" + "".join(f"{row[c]:>14,.2f}" for c in columns))


if __name__ == "__main__":
    main()
