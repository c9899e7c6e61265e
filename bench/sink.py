"""Sink throughput: trades/s into PostgreSQL from one process through RowWriter (the sink's write path).

    .venv/bin/python bench/sink.py [--rows 1000000] [--batch-size 10000] [--concurrency 1] [--fresh-each]

On a freshly created database of the dev stack (dropped afterwards): migrate, then write ``--rows`` distinct
trades (50 instruments, numeric ids, realistic prices, 1 ms apart) in batches through ``--concurrency`` writers
sharing one RowWriter (its pool), and report rows/s of the whole run (record building, binary COPY into the
staging table and the ``INSERT ... ON CONFLICT`` all included), then the same batches again (all duplicates).
The machine's load average is printed alongside: other work on the same cores changes the wall-clock figure.
So the CPU time per row is printed too, of this process and of the PostgreSQL server processes that did the
work (our database's backends and the WAL writer, checkpointer and background writer, read from /proc): their
sum bounds what two idle cores can do (2 / (us per row) million rows/s with both cores busy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg

from market_ingestor.config import StorageConfig
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Trade
from market_ingestor.sinks.schema import migrate
from market_ingestor.sinks.writer import RowWriter

SYMBOLS = [f"SYM{n}USDT" for n in range(50)]
T0 = 1_767_225_600 * 10**9  # 2026-01-01 00:00 UTC


def make_trades(count: int) -> list[Trade]:
    base = Decimal("27123.45")
    qty = [Decimal(f"0.{n:05d}") for n in range(1, 1000)]
    out = []
    for n in range(count):
        ts = T0 + n * 1_000_000
        price = base + Decimal(n % 1000) / 100
        side = "buy" if n % 3 else "sell"
        out.append(Trade("binance", SYMBOLS[n % 50], str(1_000_000_000 + n), price, qty[n % 999], side, ts, ts + 5))
    return out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"  # float-ok: load


def _cpu_s(pid: int) -> float:  # float-ok: seconds
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # the process ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_pids(conn: asyncpg.Connection, database: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 OR backend_type IN"
        " ('walwriter', 'checkpointer', 'background writer')",
        database,
    )
    return [row["pid"] for row in rows]


async def write_all(writer: RowWriter, batches: list[list[Trade]], concurrency: int) -> float:
    queue = iter(batches)

    async def worker() -> None:
        for batch in queue:
            await writer.write(batch)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    server_url = ensure_stack().database_url
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    try:
        settings = StorageConfig(pool_min_size=args.concurrency, pool_max_size=args.concurrency)
        await migrate(url, settings)
        trades = make_trades(args.rows)
        batches = [trades[i : i + args.batch_size] for i in range(0, len(trades), args.batch_size)]
        writer = RowWriter(url, settings)
        await writer.start()
        try:
            await writer.write(batches[0][:1])  # partitions and connections ready; not timed
            print(f"{load()} before")
            pids = await server_pids(admin, name)
            for label in ("insert", "re-delivery (all duplicates)"):
                server0, client0 = sum(map(_cpu_s, pids)), time.process_time()
                seconds = await write_all(writer, batches, args.concurrency)
                server_us = (sum(map(_cpu_s, pids)) - server0) / args.rows * 1e6
                client_us = (time.process_time() - client0) / args.rows * 1e6
                print(
                    f"{label}: {args.rows:,} trades in {seconds:.2f} s = {args.rows / seconds:,.0f} rows/s "
                    f"(batch {args.batch_size:,}, {args.concurrency} connection(s)); CPU per row: "
                    f"client {client_us:.2f} us + server {server_us:.2f} us = {client_us + server_us:.2f} us"
                )
            print(f"{load()} after")
        finally:
            await writer.close()
        count = await (await asyncpg.connect(url)).fetchval("SELECT count(*) FROM market_trades")
        assert count == args.rows, count
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
