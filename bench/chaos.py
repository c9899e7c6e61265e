"""Chaos run with zero-loss accounting, on Kafka (issue 13, first slice).

    export MARKET_INGESTOR_DEVSTACK_PORT_OFFSET=900   # your own dev stack (market-ingestor dev up)
    python bench/chaos.py --minutes 10

Runs ``simulate`` (all five exchanges, malformed frames and connection drops on, with ``--journal``), ``ingest``,
``worker`` and ``sink`` as separate processes on one config, a fresh database and a fresh topic prefix. Every
``--fault-every-s`` it SIGKILLs and restarts, in turn, the worker, the sink and ingest. Then it stops the
simulator, waits until the stored trades and klines stop changing, SIGTERMs the services (each must exit 0) and
accounts (chaos_accounting.py): trades, klines (``db rebuild-klines``' check), dead letters. Exit code 1 when
anything is lost, duplicated, changed, wrong or a service failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from chaos_accounting import (
    StoredTrade,
    TradeAccount,
    account_trades,
    expected_dead_letters,
    reconnected_s,
)
from market_ingestor.bus import open_bus
from market_ingestor.config import load_config
from market_ingestor.devstack.stack import ensure_stack
from market_ingestor.ingestor.simulator import DIALECTS, get_dialect
from market_ingestor.ingestor.simulator.journal import read_journal
from market_ingestor.sinks.rebuild import check_klines
from market_ingestor.sinks.schema import migrate
from market_ingestor.streams.windows import parse_intervals

SYMBOLS = ("BTCUSDT", "ETHUSDT")
SERVICES = ("worker", "sink", "ingest")  # killed in this order, round and round
IN_FLIGHT_S = 3.0
RECOVER_TIMEOUT_S = 90.0
DRAIN_STABLE_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name, self.argv, self.workdir = name, argv, workdir
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"{self.name}.{self.starts}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self, wait_s: float = 90.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -999  # a hang: reported as such

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Fault:
    kind: str
    service: str
    at_s: float  # since the run started
    t_mono: float
    recover_s: float | None = None


async def progress(conn: asyncpg.Connection, service: str) -> int:
    """A number that grows while ``service``'s output reaches the database."""
    if service == "worker":
        value = await conn.fetchval("SELECT count(*) + coalesce(sum(revision), 0) FROM market_klines")
    else:
        value = await conn.fetchval("SELECT count(*) FROM market_trades")
    return int(value)


async def until_progress(conn: asyncpg.Connection, service: str, since: float) -> float | None:
    """Seconds from ``since`` until ``service``'s output grows again (polls the database, with a deadline)."""
    before = await progress(conn, service)
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        if await progress(conn, service) > before:
            return time.monotonic() - since
    return None


def write_config(path: Path, workdir: Path, bootstrap: str, database_url: str, prefix: str, sim_port: int) -> None:
    lines = [
        '[log]\nlevel = "WARNING"',
        f'[bus]\ntopic_prefix = "{prefix}"',
        f'[bus.kafka]\nbootstrap = "{bootstrap}"\npartitions = 2',
        f'[database]\nurl = "{database_url}"',
        f'[streams]\napp_id = "{prefix.rstrip(".")}"\ndata_dir = "{workdir / "worker"}"\nintervals = ["1m"]',
        '[metrics]\nhost = "127.0.0.1"',
    ]
    for name in DIALECTS:
        ws_path = get_dialect(name).ws_path
        lines.append(
            f'[exchanges.{name}]\nws_url = "ws://127.0.0.1:{sim_port}/{name}{ws_path}"\n'
            f'rest_url = "http://127.0.0.1:{sim_port}/{name}"\nsymbols = ["{SYMBOLS[0]}", "{SYMBOLS[1]}"]'
        )
    path.write_text("\n".join(lines) + "\n")


async def run(args: argparse.Namespace) -> int:
    stack = ensure_stack()
    workdir = Path(args.workdir or f"/tmp/chaos-{uuid.uuid4().hex[:6]}")
    os.makedirs(workdir, exist_ok=True)
    prefix = f"chaos{uuid.uuid4().hex[:6]}."
    db_name = f"chaos_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    await admin.close()
    database_url = stack.database_url.rsplit("/", 1)[0] + f"/{db_name}"
    await migrate(database_url)
    sim_port = free_port()
    config_path, journal = workdir / "market-ingestor.toml", workdir / "sent.journal"
    write_config(config_path, workdir, stack.kafka_bootstrap, database_url, prefix, sim_port)
    env_ports = {f"MARKET_INGESTOR__{s.upper()}__METRICS_PORT": str(free_port()) for s in ("ingest", "streams", "sink")}
    os.environ.update(env_ports)
    cli = [sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_path)]
    sim = Service(
        "simulate",
        [
            *cli,
            "simulate",
            "--port",
            str(sim_port),
            "--symbols",
            ",".join(SYMBOLS),
            "--rate",
            str(args.rate),
            "--malformed-every",
            str(args.malformed_every),
            "--drop-every-s",
            str(args.drop_every_s),
            "--journal",
            str(journal),
            "--log-level",
            "WARNING",
        ],
        workdir,
    )
    services = {name: Service(name, [*cli, name], workdir) for name in ("sink", "worker", "ingest")}
    print(f"# chaos: {args.minutes} min, {args.rate} trades/s, workdir {workdir}, db {db_name}, prefix {prefix}")
    conn = await asyncpg.connect(database_url)
    faults: list[Fault] = []
    failures: list[str] = []
    started = time.monotonic()
    sim.start()
    for service in services.values():
        service.start()
    end = started + args.minutes * 60
    turn = 0
    while time.monotonic() + args.fault_every_s < end:
        await asyncio.sleep(args.fault_every_s)
        for service in (sim, *services.values()):
            if not service.alive():
                failures.append(f"{service.name} exited by itself ({service.proc and service.proc.returncode})")
                service.start()
        name = SERVICES[turn % len(SERVICES)]
        turn += 1
        now = time.monotonic()
        services[name].kill()
        services[name].start()
        fault = Fault("SIGKILL+restart", name, now - started, now)
        faults.append(fault)
        if name != "ingest":
            fault.recover_s = await until_progress(conn, name, now)
        print(f"#   {fault.at_s:7.1f}s kill {name}: recovered in {fault.recover_s}", flush=True)
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    sim_code = sim.terminate()
    # Drain: until the stored trades and klines stop changing for DRAIN_STABLE_S.
    last, stable_since = (-1, -1), time.monotonic()
    drain_deadline = time.monotonic() + 300
    while time.monotonic() - stable_since < DRAIN_STABLE_S and time.monotonic() < drain_deadline:
        await asyncio.sleep(1.0)
        now_state = (await progress(conn, "sink"), await progress(conn, "worker"))
        if now_state != last:
            last, stable_since = now_state, time.monotonic()
    codes = {name: service.terminate() for name, service in services.items()} | {"simulate": sim_code}
    failures += [f"{name} exited {code}" for name, code in codes.items() if code != 0]
    records = list(read_journal(journal))
    for fault in faults:
        if fault.service == "ingest":
            fault.recover_s = reconnected_s(records, fault.t_mono, DIALECTS)
    rows = await conn.fetch("SELECT exchange, symbol, trade_id, price::text, qty::text FROM market_trades")
    account = account_trades(records, (StoredTrade(*row) for row in rows), IN_FLIGHT_S)
    klines_checked, klines_wrong = await check_all_klines(conn, config_path)
    await conn.close()
    expected, flying = expected_dead_letters(records, IN_FLIGHT_S)
    found = await dead_letters(config_path, prefix)
    print_table(
        args, time.monotonic() - started, faults, account, klines_checked, klines_wrong, expected, flying, found
    )
    print(f"# exit codes: {codes}")
    for failure in failures:
        print(f"FAILURE: {failure}")
    ok = account.ok and not klines_wrong and not failures and expected <= found <= expected + flying
    if not ok:
        print(f"# lost (first 10): {account.lost[:10]}\n# never sent: {account.never_sent[:10]}")
        print(f"# changed: {account.changed[:10]}")
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


async def check_all_klines(conn: asyncpg.Connection, config_path: Path) -> tuple[int, int]:
    config = load_config(config_path)
    checked = wrong = 0
    bounds = await conn.fetch(
        "SELECT exchange, symbol, min(ts_ns) AS lo, max(ts_ns) AS hi FROM market_trades GROUP BY 1, 2"
    )
    for interval in parse_intervals(config.streams.intervals):
        for row in bounds:
            report = await check_klines(
                conn, row["exchange"], row["symbol"], interval, row["lo"], row["hi"] + 1,
                now_ns=time.time_ns(), grace_ns=config.streams.grace_ms * 1_000_000,
            )  # fmt: skip
            checked += report.compared
            wrong += len(report.differences)
            for difference in report.differences[:3]:
                print(f"# kline {row['exchange']} {row['symbol']} {interval.name}: {difference}")
    return checked, wrong


async def dead_letters(config_path: Path, prefix: str) -> int:
    config = load_config(config_path)
    deliveries = await open_bus(config.bus).read_topic(f"{prefix}market.deadletter")
    letters = [d for d in deliveries if b'"deadletter"' in d.value]
    return len(letters)


def print_table(
    args: argparse.Namespace,
    duration_s: float,
    faults: list[Fault],
    a: TradeAccount,
    klines_checked: int,
    klines_wrong: int,
    dl_expected: int,
    dl_flying: int,
    dl_found: int,
) -> None:
    print(f"\n## chaos run: {duration_s:.0f} s, {args.rate} trades/s, 5 exchanges x {len(SYMBOLS)} symbols")
    print("| fault | service | at (s) | recovered after (s) |\n|---|---|---|---|")
    for f in faults:
        recovered = "NOT RECOVERED" if f.recover_s is None else f"{f.recover_s:.1f}"
        print(f"| {f.kind} | {f.service} | {f.at_s:.1f} | {recovered} |")
    print("\n| measure | value |\n|---|---|")
    table = {
        "trades sent (distinct)": a.sent,
        "trades owed (not in flight at a fault)": a.owed,
        "trades stored": a.stored,
        "duplicated": a.duplicated,
        "lost": len(a.lost),
        "stored but never sent": len(a.never_sent),
        "stored with other text": len(a.changed),
        f"in flight at a fault (<= {IN_FLIGHT_S} s before a session died)": a.in_flight,
        "... of which stored": a.in_flight_stored,
        "klines checked": klines_checked,
        "klines wrong": klines_wrong,
        "dead letters expected (+ in flight)": f"{dl_expected} (+{dl_flying})",
        "dead letters found": dl_found,
    }
    for name, value in table.items():
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="trades/s over all exchanges and symbols")
    parser.add_argument("--fault-every-s", type=float, default=25.0)
    parser.add_argument("--malformed-every", type=int, default=500)
    parser.add_argument("--drop-every-s", type=float, default=45.0)
    parser.add_argument("--workdir", default=None)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
