"""Sink throughput: trades/s into PostgreSQL from one process through RowWriter (the sink's write path).

    .venv/bin/python bench/sink.py [--rows 1000000] [--batch-size 50000] [--concurrency 2] [--ladder]
                                   [--server postgres|timescaledb|both]

On a freshly created database of each dev-stack server (plain PostgreSQL, and the TimescaleDB one where the dev
stack has it; dropped afterwards): migrate, then write ``--rows`` distinct
trades (50 instruments, numeric ids, realistic prices, 1 ms apart) in batches through ``--concurrency`` writers
sharing one RowWriter (its pool), and report rows/s of the whole run (record building, binary COPY into the
staging table and the insert all included), then the same batches again (all duplicates). ``--ladder`` measures
the writer's optimizations one step at a time, each on a fresh database.
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
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import asyncpg

from market_ingestor.config import StorageConfig
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Trade
from market_ingestor.sinks import writer as writer_module
from market_ingestor.sinks.schema import migrate
from market_ingestor.sinks.writer import RowWriter

SYMBOLS = [f"SYM{n}USDT" for n in range(50)]
DAY_NS = 86_400 * 10**9
# Today (UTC) from midnight, as a live sink writes: older rows would be in TimescaleDB's compression policy's
# range, and its job could compress chunks in the middle of a run.
T0 = time.time_ns() // DAY_NS * DAY_NS


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


async def write_all(writer: RowWriter, batches: list[list[Trade]], concurrency: int) -> float:  # float-ok: s
    queue = iter(batches)

    async def worker() -> None:
        for batch in queue:
            await writer.write(batch)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return time.perf_counter() - started


class _BinaryNumericTable(writer_module._Table, frozen=True):
    """The staging table as first written: NUMERIC columns, Decimals encoded by asyncpg (ladder step 0)."""

    def create_stage(self) -> str:
        return f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.stage} ({self.columns}) ON COMMIT DELETE ROWS"


def _decimal_record(e: Trade) -> tuple[object, ...]:
    return (e.exchange, e.symbol, e.trade_id, e.ts, e.ts, e.price, e.qty, e.side)


@contextmanager
def variant(binary_decimals: bool, always_upsert: bool) -> Iterator[None]:
    """Undoes the writer's optimizations, for the ladder: binary Decimal COPY, ON CONFLICT for every batch."""
    saved_table, saved_plain = writer_module.TABLES[Trade], dict(writer_module._PLAIN)
    if binary_decimals:
        fields = {f: getattr(saved_table, f) for f in saved_table.__struct_fields__} | {"record": _decimal_record}
        writer_module.TABLES[Trade] = _BinaryNumericTable(**fields)
    if always_upsert:
        writer_module._PLAIN.clear()
    try:
        yield
    finally:
        writer_module.TABLES[Trade] = saved_table
        writer_module._PLAIN.update(saved_plain)


async def run(server_url: str, rows: int, batch_size: int, concurrency: int, label: str) -> None:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    try:
        settings = StorageConfig(pool_min_size=concurrency, pool_max_size=concurrency)
        await migrate(url, settings)
        trades = make_trades(rows)
        batches = [trades[i : i + batch_size] for i in range(0, len(trades), batch_size)]
        writer = RowWriter(url, settings)
        await writer.start()
        try:
            await writer.write(batches[0][:1])  # partitions and connections ready; not timed
            pids = await server_pids(admin, name)
            print(f"{label} (batch {batch_size:,}, {concurrency} connection(s)), {load()}:")
            for what in ("new trades", "all duplicates"):
                server0, client0 = sum(map(_cpu_s, pids)), time.process_time()
                seconds = await write_all(writer, batches, concurrency)
                server_us = (sum(map(_cpu_s, pids)) - server0) / rows * 1e6
                client_us = (time.process_time() - client0) / rows * 1e6
                print(
                    f"  {what}: {rows / seconds:,.0f} rows/s ({rows:,} in {seconds:.2f} s); CPU per row: "
                    f"client {client_us:.2f} us + server {server_us:.2f} us = {client_us + server_us:.2f} us"
                )
        finally:
            await writer.close()
        conn = await asyncpg.connect(url)
        count = await conn.fetchval("SELECT count(*) FROM market_trades")
        await conn.close()
        assert count == rows, count
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# The optimizations one at a time, each on a fresh database: (label, binary decimals, always upsert, batch, conns).
LADDER = [
    ("0 binary COPY of Decimal records, INSERT ... ON CONFLICT", True, True, 10_000, 1),
    ("1 numerics staged as text", False, True, 10_000, 1),
    ("2 plain INSERT, ON CONFLICT only after a duplicate", False, False, 10_000, 1),
    ("3 two connections", False, False, 10_000, 2),
    ("4 larger batches", False, False, 50_000, 2),
    ("  the sink's default batch", False, False, 1_000, 2),
]


async def main(args: argparse.Namespace) -> None:
    stack = ensure_stack()
    servers = {"postgres": stack.database_url, "timescaledb": stack.timescaledb_url}
    for server in ("postgres", "timescaledb") if args.server == "both" else (args.server,):
        server_url = servers[server]
        if server_url is None:
            print(f"{server}: not in this dev stack ({stack.timescaledb_missing})")
            continue
        if not args.ladder:
            await run(server_url, args.rows, args.batch_size, args.concurrency, f"RowWriter, {server}")
            continue
        for label, binary_decimals, always_upsert, batch_size, concurrency in LADDER:
            with variant(binary_decimals, always_upsert):
                await run(server_url, args.rows, batch_size, concurrency, f"{label}, {server}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--ladder", action="store_true", help="Measure the optimizations one at a time.")
    parser.add_argument("--server", choices=("postgres", "timescaledb", "both"), default="both")
    asyncio.run(main(parser.parse_args()))
