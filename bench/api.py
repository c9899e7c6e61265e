"""Latency of ``GET /api/v1/klines`` over one day of 1m klines (goal: p99 < 20 ms for the whole day).

A fresh database on the dev stack's PostgreSQL gets 1,440 1m klines of one instrument through the sinks' writer;
the API (auth on, key cache warm) runs in a child process on a free port; this process sends requests over
keep-alive HTTP and measures each from send to the last byte of the body. Scenarios: the whole day in one page
(limit=1440), pages of 100 and 500 from a start time, one at a time (latency), then the whole day with several
requests in flight (throughput). The machine's load (``uptime``) is printed: other work shares the cores.

    .venv/bin/python bench/api.py [--requests 1000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg

from market_ingestor.api.keys import create_key
from market_ingestor.devstack import ensure_stack
from market_ingestor.model import Kline
from market_ingestor.sinks.schema import migrate
from market_ingestor.sinks.writer import RowWriter

DAY_NS = 1_709_251_200_000_000_000  # 2024-03-01
MINUTE_NS = 60_000_000_000


def day_of_klines() -> list[Kline]:
    klines = []
    for n in range(1440):
        price = Decimal("42000.10") + Decimal("0.01") * n
        open_time = DAY_NS + n * MINUTE_NS
        klines.append(
            Kline("binance", "BTCUSDT", "1m", open_time, open_time + MINUTE_NS - 1, price, price + 2, price - 1,
                  price + Decimal("0.5"), Decimal("12.345678"), Decimal("518518.123456"), 100 + n, Decimal("6.1"),
                  Decimal("256000.5"), str(n * 1000), str(n * 1000 + 99), price + Decimal("0.123456789"), True)
        )  # fmt: skip
    return klines


async def prepare(admin_url: str) -> tuple[str, str]:
    name = f"bench_api_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    await migrate(url)
    writer = RowWriter(url)
    await writer.start()
    try:
        await writer.write(day_of_klines())
    finally:
        await writer.close()
    connection = await asyncpg.connect(url)
    try:
        key = (await create_key(connection, "bench")).key
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
    return url, key


async def drop(admin_url: str, url: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def serve(url: str, port: int) -> None:
    """The child: the API app with a real pool and key verification, no Kafka (the route reads no ticker)."""
    from aiohttp import web

    from market_ingestor.api.app import build_web_app
    from market_ingestor.api.keys import KeyVerifier
    from market_ingestor.api.store import Store
    from market_ingestor.api.ticker_state import MemoryTicker
    from market_ingestor.config import ApiConfig, Config, DatabaseConfig

    config = Config(
        database=DatabaseConfig(url=url), api=ApiConfig(rate_limit_per_s=1_000_000, rate_limit_burst=1_000_000)
    )
    store = Store(url, pool_size=4)
    await store.start()
    runner = web.AppRunner(build_web_app(config, store, MemoryTicker(), KeyVerifier(store.pool)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


SERVER: dict[str, list[float]] = {}  # float-ok: the server's own time per request (Server-Timing), ms


async def timed(session: aiohttp.ClientSession, path: str, rows: int) -> float:  # float-ok: seconds
    start = time.perf_counter()
    async with session.get(path) as response:
        body = await response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200 or body.count(b'"open_time"') != rows:
        raise SystemExit(f"unexpected answer to {path}: {response.status} {body[:300]!r}")
    server_ms = float(response.headers["Server-Timing"].rpartition("=")[2])  # float-ok: milliseconds
    SERVER.setdefault(path, []).append(server_ms)
    return elapsed


def percentiles(samples: list[float]) -> tuple[float, float]:  # float-ok: durations
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def cpu_s(pid: int) -> float:  # float-ok: seconds
    """CPU time (user + system) a process has used so far, from /proc (Linux); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, path: str, samples: list[float], cpu_used_s: float) -> None:  # float-ok: seconds
    p50, p99 = percentiles([s * 1000 for s in samples])
    s50, s99 = percentiles(SERVER.pop(path)[-len(samples) :])
    server = f"server alone p50 {s50:5.2f} p99 {s99:6.2f}; server CPU {cpu_used_s / len(samples) * 1000:5.2f} ms/req"
    print(f"{name:<34} n={len(samples):<5} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   ({server})")


async def measure(server_pid: int, port: int, key: str, requests: int, concurrency: int) -> None:
    base = f"http://127.0.0.1:{port}/api/v1/klines/binance/BTCUSDT?interval=1m"
    scenarios = [
        ("whole day, limit=1440", f"{base}&limit=1440", 1440),
        ("page of 500 from 06:00", f"{base}&limit=500&from=2024-03-01T06:00:00Z", 500),
        ("page of 100 from 12:00", f"{base}&limit=100&from=1709294400000", 100),
    ]
    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as session:
        for _ in range(50):  # warm-up: connections, prepared statements, key cache
            await timed(session, scenarios[0][1], 1440)
        SERVER.clear()
        for name, path, rows in scenarios:
            cpu_before = cpu_s(server_pid)
            samples = [await timed(session, path, rows) for _ in range(requests)]
            report(name + ", sequential", path, samples, cpu_s(server_pid) - cpu_before)

        whole_day, rows = scenarios[0][1], scenarios[0][2]
        samples = []
        cpu_before = cpu_s(server_pid)

        async def client(count: int) -> None:
            for _ in range(count):
                samples.append(await timed(session, whole_day, rows))

        start = time.perf_counter()
        await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        report(f"whole day, {concurrency} in flight", whole_day, samples, cpu_s(server_pid) - cpu_before)
        print(f"{'':<34} {len(samples) / elapsed:.0f} requests/s ({len(samples) * 1440 / elapsed:,.0f} klines/s)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--serve", nargs=2, metavar=("URL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1])))
        return
    admin_url = ensure_stack().database_url
    url, key = asyncio.run(prepare(admin_url))
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, str(port)], stdout=subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise SystemExit("the API did not start")
        print(f"machine: {os.cpu_count()} cores; load before: {subprocess.check_output(['uptime'], text=True).strip()}")
        asyncio.run(measure(child.pid, port, key, args.requests, args.concurrency))
        print(f"load after: {subprocess.check_output(['uptime'], text=True).strip()}")
    finally:
        child.terminate()
        child.wait()
        asyncio.run(drop(admin_url, url))


if __name__ == "__main__":
    main()
