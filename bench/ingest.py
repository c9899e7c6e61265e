"""End to end: simulator -> ingest (connectors) -> Kafka, as three processes on this machine.

    .venv/bin/python bench/ingest.py [--rate 120000] [--seconds 10] [--exchanges binance,okx,bybit,coinbase,kraken]

Starts ``market-ingestor simulate`` at ``--rate`` trades/s in total and ``market-ingestor ingest`` pointed at
it (Kafka of the dev stack, a fresh topic prefix), then reads the trades topic for ``--seconds`` after a warm-up
and reports trades/s arriving in Kafka (records are batches of trades: their events are counted) and the
receipt-to-publish latency: the Kafka record timestamp (set when the publisher appends the closed batch record to
a Kafka batch, ms resolution) minus the ``recv_ts`` of the record's first trade, the one that waited longest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from aiokafka import AIOKafkaConsumer

from market_ingestor.bus.records import split_events
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Trade, decoder_for

BIN = Path(sys.executable).parent / "market-ingestor"
trade_decoder = decoder_for(Trade)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(port: int, exchanges: list[str], symbols: list[str], bootstrap: str, prefix: str) -> str:
    sections = "".join(
        f'[exchanges.{name}]\nsymbols = {symbols!r}\nws_url = "{url}"\nrest_url = "http://127.0.0.1:{port}/{name}"\n'
        for name, url in ((name, ws_url(port, name)) for name in exchanges)
    ).replace("'", '"')
    return (
        f'[log]\nlevel = "WARNING"\n[bus]\nkind = "kafka"\ntopic_prefix = "{prefix}"\n'
        f'[bus.kafka]\nbootstrap = "{bootstrap}"\npartitions = 12\n'
        f'[ingest]\nchannels = ["trades"]\n{sections}'
    )


def ws_url(port: int, exchange: str) -> str:
    paths = {"binance": "/stream", "okx": "/ws/v5/public", "bybit": "/v5/public/spot", "coinbase": "/", "kraken": "/v2"}
    return f"ws://127.0.0.1:{port}/{exchange}{paths[exchange]}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    bootstrap: str, topic: str, warmup_s: float, seconds: float, pids: dict[str, int]
) -> tuple[int, list[float], dict[str, float]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + warmup_s
        while time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=10_000)
        count, latencies_ms = 0, []
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                # Each record is a batch of trades (docs/topics.md): count its events without decoding them all.
                count += sum(len(split_events(record.value)) for record in records)
                # Decode a sample only: the measuring consumer shares the two cores with what it measures. The
                # first trade of a record waited longest for it to close.
                for record in records[::20]:
                    trade = trade_decoder.decode(split_events(record.value)[0])
                    latencies_ms.append(record.timestamp - trade.recv_ts / 1e6)
        cpu_s = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        return count, latencies_ms, cpu_s
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=120_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--exchanges", default="binance,okx,bybit,coinbase,kraken")
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT,XRPUSDT,ADAUSDT")
    args = parser.parse_args()
    info = ensure_stack()
    exchanges, symbols = args.exchanges.split(","), args.symbols.split(",")
    port, prefix = free_port(), f"bench{uuid.uuid4().hex[:6]}."
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "market-ingestor.toml"
        config.write_text(config_text(port, exchanges, symbols, info.kafka_bootstrap, prefix))
        simulator = subprocess.Popen(
            [str(BIN), "simulate", "--port", str(port), "--rate", str(args.rate), "--symbols", args.symbols,
             "--exchanges", args.exchanges, "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        ingest = subprocess.Popen([str(BIN), "--config", str(config), "ingest"], env=env)
        try:
            pids = {"simulator": simulator.pid, "ingest": ingest.pid}
            count, latencies, cpu_s = asyncio.run(
                measure(info.kafka_bootstrap, prefix + "market.trades", args.warmup, args.seconds, pids)
            )
        finally:
            ingest.send_signal(signal.SIGTERM)  # first, so it does not see the simulator go away
            ingest_rc = ingest.wait(60)
            simulator.send_signal(signal.SIGTERM)
            simulator_rc = simulator.wait(60)
    latencies.sort()
    print(f"simulator rate {args.rate:,}/s over {len(exchanges)} exchanges x {len(symbols)} symbols, trades only")
    print(f"trades in Kafka: {count / args.seconds:,.0f}/s over {args.seconds:.0f}s")
    for name, seconds in cpu_s.items():
        per_trade_us = seconds * 1e6 / max(count, 1)
        print(f"{name} CPU: {seconds / args.seconds:.0%} of a core, {per_trade_us:.1f} us per trade")
    print("load average:", " ".join(f"{value:.1f}" for value in os.getloadavg()))
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print(f"receipt->publish latency: p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms")
    print(f"exit codes: ingest {ingest_rc}, simulator {simulator_rc}")


if __name__ == "__main__":
    main()
