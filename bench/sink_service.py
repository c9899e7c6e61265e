"""End-to-end rate of the sink service: trades on the bus -> ``market-ingestor sink`` (a separate process) ->
PostgreSQL, with the dev stack.

    .venv/bin/python bench/sink_service.py [--bus kafka|nats|both] [--count 200000] [--batch-size 1000]

For each bus: a fresh database and topic prefix, ``--count`` trades published up front, then the sink started;
it reports the rows/s from the first stored row to the last (startup and group join excluded) and the sink's
CPU time per row. Trades are spread over 50 instruments (several partitions).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.config import BusConfig, KafkaConfig, NatsConfig
from market_ingestor.devstack import StackInfo, ensure_stack
from market_ingestor.model import Topics, Trade, bus_key, encode, event_id
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
        config = work / "sink.toml"
        config.write_text(
            f'[log]\nlevel = "WARNING"\n[bus]\nkind = "{kind}"\ntopic_prefix = "{prefix}"\n'
            f'[bus.kafka]\nbootstrap = "{stack.kafka_bootstrap}"\n[bus.nats]\nurl = "{stack.nats_url}"\n'
            f'storage = "memory"\n[database]\nurl = "{url}"\n[streams]\napp_id = "{prefix[:-1]}"\n'
            f"[sink]\nbatch_size = {batch_size}\n"
        )
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config), "sink", "--data-dir",
            str(work / "data"), stdout=asyncio.subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONPATH": SRC},
        )  # fmt: skip
        conn = await asyncpg.connect(url)
        first_at = first_count = None
        stored = 0
        while stored < count:
            await asyncio.sleep(0.05)
            stored = await conn.fetchval("SELECT count(*) FROM market_trades")
            if stored and first_at is None:
                first_at, first_count = time.monotonic(), stored
        elapsed = time.monotonic() - (first_at or 0)
        await conn.close()
        proc.terminate()
        await proc.wait()
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
        rate = (count - (first_count or 0)) / max(elapsed, 1e-9)
        per_row_us = cpu_s * 1e6 / count
        print(f"{kind:5} {count} trades, batch {batch_size}: {rate:,.0f} rows/s; sink CPU {per_row_us:.0f} us/row")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", choices=["kafka", "nats", "both"], default="both")
    parser.add_argument("--count", type=int, default=200_000)
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
