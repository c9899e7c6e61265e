"""End-to-end rate of the sink service: trades on the bus -> ``market-ingestor sink`` (a separate process) ->
PostgreSQL, with the dev stack.

    .venv/bin/python bench/sink_service.py [--bus kafka|nats|both] [--count 1000000] [--batch-size 1000]

For each bus: a fresh database and topic prefix, ``--count`` trades published up front through the bus publisher
(batch records, as ingest writes them), then the sink started; it reports the rows/s from the first stored row
to the last (startup and group join excluded), the sink's CPU time per row and its peak RSS, and the machine's
load average. Trades are spread over 50 instruments (several partitions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import aiohttp
import asyncpg

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.devstack import StackInfo, ensure_stack
from market_ingestor.model import Trade, encode
from market_ingestor.sinks.schema import migrate

SYMBOLS = [f"SYM{n}USDT" for n in range(50)]
T0 = 1_709_208_000 * 10**9


SRC = str(Path(__file__).resolve().parent.parent / "src")


async def run(stack: StackInfo, kind: str, count: int, batch_size: int, work: Path, log: IO[bytes]) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    name = work.name
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    try:
        await migrate(url)
        bus_config = BusConfig(
            kind=kind,  # type: ignore[arg-type]
            topic_prefix=prefix,
            kafka=KafkaConfig(bootstrap=stack.kafka_bootstrap),
            nats=NatsConfig(url=stack.nats_url, storage="memory"),
        )
        bus = open_bus(bus_config)
        await bus.ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
        publisher = bus.publisher()
        await publisher.start()
        for n in range(count):
            trade = Trade("bench", SYMBOLS[n % 50], str(n), Decimal("27123.45"), Decimal("0.00123"), "buy", T0 + n, T0)
            await publisher.publish(prefix + Topics.TRADES, bus_key(trade), encode(trade), event_id(trade))
        await publisher.stop()
        port = free_port()
        config = work / "sink.toml"
        config.write_text(
            f'[log]\nlevel = "WARNING"\n[bus]\nkind = "{kind}"\ntopic_prefix = "{prefix}"\n'
            f'[bus.kafka]\nbootstrap = "{stack.kafka_bootstrap}"\n[bus.nats]\nurl = "{stack.nats_url}"\n'
            f'storage = "memory"\n[database]\nurl = "{url}"\n[streams]\napp_id = "{prefix[:-1]}"\n'
            f"[sink]\nbatch_size = {batch_size}\nmetrics_port = {port}\n"
        )
        env = {**os.environ, "PYTHONPATH": SRC, "MARKET_INGESTOR__SINK__METRICS_PORT": str(port)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config), "sink",
            stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env,
        )  # fmt: skip
        # Progress from the sink's own counter (a count(*) every few ms would load the database it measures).
        async with aiohttp.ClientSession() as http:
            first_at = first_count = first_cpu_s = None
            stored = 0
            while stored < count:
                await asyncio.sleep(0.05)
                stored = await stored_rows(http, port)
                if stored and first_at is None:
                    first_at, first_count, first_cpu_s = time.monotonic(), stored, cpu_seconds(proc.pid)
        elapsed = time.monotonic() - (first_at or 0)
        cpu_s = cpu_seconds(proc.pid) - (first_cpu_s or 0)
        peak_rss_mb = peak_rss_kb(proc.pid) / 1024
        proc.terminate()
        await proc.wait()
        rows = count - (first_count or 0)
        load = " ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"{kind:5} {count:,} trades, batch {batch_size}: {rows / max(elapsed, 1e-9):,.0f} rows/s; sink CPU "
            f"{cpu_s * 1e6 / max(rows, 1):.1f} us/row ({cpu_s / max(elapsed, 1e-9):.0%} of a core while storing), "
            f"peak RSS {peak_rss_mb:.0f} MB; load average {load}"
        )
    finally:
        if kind == "nats":  # memory streams: do not leave them on the dev server
            import nats

            from market_ingestor.bus.nats import stream_name

            client = await nats.connect(stack.nats_url)
            for spec in PIPELINE_TOPICS:
                await client.jetstream().delete_stream(stream_name(prefix + spec.name))
            await client.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def stored_rows(http: aiohttp.ClientSession, port: int) -> int:
    """``db_insert_total{table="market_trades"}`` of the sink (0 while it is not answering yet)."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return 0
    found = re.search(r'^db_insert_total\{table="market_trades"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), read before it exits."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", choices=["kafka", "nats", "both"], default="both")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    stack = ensure_stack()
    for kind in ("kafka", "nats") if args.bus == "both" else (args.bus,):
        work = Path(f"/tmp/bench_{uuid.uuid4().hex[:8]}")
        work.mkdir()
        with (work / "sink.log").open("wb") as log:
            asyncio.run(run(stack, kind, args.count, args.batch_size, work, log))


if __name__ == "__main__":
    main()
