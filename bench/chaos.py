"""Chaos run with zero-loss accounting, on Kafka or NATS JetStream (issue 13).

    export MARKET_INGESTOR_DEVSTACK_PORT_OFFSET=900   # your own dev stack (market-ingestor dev up)
    python bench/chaos.py --minutes 10 [--bus nats]

Runs ``simulate`` (all five exchanges, malformed frames and connection drops on, with ``--journal``), ``ingest``,
``--workers`` workers (each with its own data dir and ports; ``--guarantee``, standby replicas 1 with two or
more), ``sink``, ``push`` with PUSH_CLIENTS WebSocket clients and ``api`` as separate processes on one config, a
fresh database and a fresh topic prefix. After ``--warmup-s``, every ``--fault-every-s`` it injects the next
fault of ``SCHEDULE``: SIGKILL and restart of a service, PostgreSQL or the bus (the Kafka broker, the NATS
server) stopped for ``--outage-s`` and started again, a worker paused (SIGSTOP) for longer than the bus takes to
move its work to another (Kafka's session timeout, the NATS worker's shard lease TTL) and resumed. After each it
measures the time to recover: until the hit services make progress again and until the consumer groups have
caught up (chaos_services.py; on NATS the streams, the sink's durable consumers and the worker's checkpoints,
chaos_bus.py). Then it stops the simulator, waits until every stored kline
is closed and nothing changes, checks what the users see (chaos_clients.py), SIGTERMs the services (each must
exit 0) and accounts (chaos_accounting.py): trades, klines against the stored trades and against the
simulator's, dead letters. Exit code 1 when anything is lost, duplicated, changed, wrong, a service failed or a
fault was not recovered from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from chaos_accounting import (
    KLINE_FIELDS,
    KlineAccount,
    KlineKey,
    KlineValues,
    StoredTrade,
    TradeAccount,
    account_trades,
    compare_klines,
    delivered_trades,
    expected_dead_letters,
    reconnected_s,
    repeated_outputs,
    truth_klines,
)
from chaos_bus import BusUnderTest, bus_under_test
from chaos_clients import (
    ApiReader,
    ClientAccount,
    PushClient,
    Updates,
    check_indicators,
    check_push_klines,
    kline_values,
    offline_indicators,
)
from chaos_prometheus import LAG_SAMPLE_S, LagWatch, expected_series
from chaos_services import OffsetHistory, Service, StackServer, db_value, first_true, free_port
from market_ingestor.bus import open_bus
from market_ingestor.bus.topics import Topics
from market_ingestor.config import load_config
from market_ingestor.devstack.stack import ensure_stack
from market_ingestor.simulator import DIALECTS, get_dialect
from market_ingestor.simulator.journal import read_journal
from market_ingestor.sinks.rebuild import check_klines
from market_ingestor.sinks.schema import migrate
from market_ingestor.windows import parse_intervals

SYMBOLS = ("BTCUSDT", "ETHUSDT")
# Faults in turn, round and round; "worker" is each worker in turn, "bus" the Kafka broker or the NATS server.
SCHEDULE: tuple[tuple[str, str], ...] = (
    ("kill", "worker"),
    ("kill", "sink"),
    ("stop", "postgres"),
    ("kill", "ingest"),
    ("pause", "worker"),
    ("kill", "push"),
    ("stop", "bus"),
)
INDICATORS = ("sma_3", "ema_3", "rsi_2")
PUSH_CLIENTS = 3
# The services whose progress a dev-stack server's outage stops.
HIT_BY_OUTAGE = {
    "postgres": {"sink", "api"},
    "kafka": {"ingest", "worker", "sink", "push"},
    "nats": {"ingest", "worker", "sink", "push"},
}
IN_FLIGHT_S = 3.0
RECOVER_TIMEOUT_S = 120.0
DRAIN_STABLE_S = 10.0
# A drain takes 10-20 s; failing sooner than the test's own timeout (600 s) leaves time to print the report.
DRAIN_TIMEOUT_S = 150.0
SESSION_TIMEOUT_MS = 10_000  # Kafka's session timeout, and the NATS worker's shard lease TTL
TRADES_SQL = "SELECT count(*) FROM market_trades"
KLINES_SQL = "SELECT count(*) + coalesce(sum(revision), 0) FROM market_klines"
DRAIN_SQL = (
    TRADES_SQL,
    KLINES_SQL,
    "SELECT count(*) + coalesce(sum(revision), 0) FROM indicator_values",
    "SELECT count(*) FROM market_klines WHERE NOT closed",
)


@dataclass
class Fault:
    kind: str  # kill, stop, pause
    target: str  # a service, or a dev-stack server
    at_s: float  # since the run started
    held_s: float = 0.0  # from the fault to the restart or resume
    progress_s: dict[str, float | None] = field(default_factory=dict)  # after the fault ended, per probe
    caught_up_s: dict[str, float | None] = field(default_factory=dict)  # consumer groups, after the fault ended

    @property
    def recovered(self) -> bool:
        return None not in self.progress_s.values() and None not in self.caught_up_s.values()


@dataclass
class Options:
    minutes: float = 10.0
    rate: float = 300.0  # trades/s over all exchanges and symbols
    fault_every_s: float = 25.0
    warmup_s: float = 20.0  # before the first fault: every service up and every worker with its partitions
    outage_s: float = 10.0  # PostgreSQL and Kafka stay down this long
    pause_s: float = SESSION_TIMEOUT_MS / 1000 + 5.0  # a paused worker stays stopped this long
    bus: str = "kafka"  # bus.kind: "kafka" or "nats"
    malformed_every: int = 500
    drop_every_s: float = 45.0
    workers: int = 2
    guarantee: str = "exactly_once"  # streams.processing_guarantee (standby_replicas = 1 with two workers or more)
    faults: int = 0  # stop injecting after this many (0: until the time is up)
    # The load phase lasts at least this long, faults or not: e.g. enough closed minutes for the indicators checked
    # (sma_3 needs three klines of an instrument).
    min_load_s: float = 0.0
    # bus.kafka.request_timeout_ms (0: the default, 30 s). A broker away for longer no longer costs trades (the Kafka
    # publisher keeps and retries its batches); it bounds how long a stopping publisher waits for the broker. On NATS
    # bus.nats.ack_timeout_s (0: the default, 10 s): how long a publisher waits for a lost connection to come back
    # (ingest exits after it, losing the trades it holds).
    request_timeout_ms: int = 0
    # The workers' log.level (the other services log at WARNING): INFO shows their shards taken, released, lost.
    worker_log_level: str = "WARNING"
    workdir: str | None = None


@dataclass
class Report:
    options: Options
    duration_s: float
    faults: list[Fault]
    trades: TradeAccount
    klines_checked: int
    klines_wrong: int
    truth: KlineAccount  # closed stored klines against the simulator's trades
    users: ClientAccount  # push clients and the API against the stored klines and the offline indicators
    dead_letters_expected: tuple[int, int]  # (owed, in flight)
    dead_letters_found: int
    repeated: list[tuple[object, ...]]  # closed klines and indicator values published twice (same revision)
    codes: dict[str, int]
    failures: list[str]

    @property
    def ok(self) -> bool:
        owed, flying = self.dead_letters_expected
        return (
            self.trades.ok
            and not self.klines_wrong
            and self.truth.ok
            and self.users.ok
            and not self.failures
            and owed <= self.dead_letters_found <= owed + flying
            and not (self.repeated and self.options.guarantee == "exactly_once")  # at least once may repeat
        )


class Pipeline:
    """The services of one run on one config: simulator, ingest, workers, sink."""

    def __init__(self, options: Options, workdir: Path, config_path: Path, sim_port: int) -> None:
        cli = [sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_path)]
        self.journal = workdir / "sent.journal"
        #: Each service's /metrics port(s), by Prometheus job.
        self.metrics_ports: dict[str, list[int]] = {job: [free_port()] for job in ("sink", "ingest", "push")}
        self.simulator = Service(
            "simulate", [*cli, "simulate", *simulate_args(options, sim_port, self.journal)], workdir
        )
        self.services = {
            name: Service(name, [*cli, name], workdir, {f"MARKET_INGESTOR__{name.upper()}__METRICS_PORT": str(port)})
            for name, (port,) in self.metrics_ports.items()
            if name != "push"
        }
        self.push_port, self.api_port = free_port(), free_port()
        self.services["push"] = Service(
            "push",
            [*cli, "push", "--host", "127.0.0.1", "--port", str(self.push_port)],
            workdir,
            {"MARKET_INGESTOR__PUSH__METRICS_PORT": str(self.metrics_ports["push"][0])},
        )
        self.services["api"] = Service(
            "api", [*cli, "api", "--host", "127.0.0.1", "--port", str(self.api_port)], workdir
        )
        self.metrics_ports["api"] = [self.api_port]
        self.metrics_ports["worker"] = []
        for n in range(1, options.workers + 1):
            name = f"worker-{n}"
            argv = [*cli, "worker", "--data-dir", str(workdir / name), "--web-port", str(free_port())]
            self.metrics_ports["worker"].append(free_port())
            env = {
                "MARKET_INGESTOR__STREAMS__METRICS_PORT": str(self.metrics_ports["worker"][-1]),
                "MARKET_INGESTOR__LOG__LEVEL": options.worker_log_level,
            }
            self.services[name] = Service(name, argv, workdir, env)
        self.workers = [name for name in self.services if name.startswith("worker-")]

    def all(self) -> list[Service]:
        return [self.simulator, *self.services.values()]


def simulate_args(options: Options, port: int, journal: Path) -> list[str]:
    return [
        "--port", str(port), "--symbols", ",".join(SYMBOLS), "--rate", str(options.rate),
        "--malformed-every", str(options.malformed_every), "--drop-every-s", str(options.drop_every_s),
        "--journal", str(journal), "--log-level", "WARNING",
    ]  # fmt: skip


def write_config(
    path: Path, options: Options, bus: BusUnderTest, database_url: str, prefix: str, sim_port: int
) -> None:
    lines = [
        '[log]\nlevel = "WARNING"',
        bus.config(prefix, options.request_timeout_ms),
        f'[database]\nurl = "{database_url}"',
        f'[streams]\napp_id = "{prefix.rstrip(".")}"\nintervals = ["1m"]\nindicators = {json.dumps(list(INDICATORS))}\n'
        f'processing_guarantee = "{options.guarantee}"\nstandby_replicas = {min(1, options.workers - 1)}',
        f'[metrics]\nhost = "127.0.0.1"\nsample_interval_s = {LAG_SAMPLE_S}',  # consumer lag, for Prometheus
        "[api]\nauth_enabled = false",
    ]
    for name in DIALECTS:
        ws_path = get_dialect(name).ws_path
        lines.append(
            f'[exchanges.{name}]\nws_url = "ws://127.0.0.1:{sim_port}/{name}{ws_path}"\n'
            f'rest_url = "http://127.0.0.1:{sim_port}/{name}"\nsymbols = ["{SYMBOLS[0]}", "{SYMBOLS[1]}"]'
        )
    path.write_text("\n".join(lines) + "\n")


class Chaos:
    """One run: the pipeline, the fault schedule with recovery measurements, the drain and the accounting."""

    def __init__(self, options: Options, workdir: Path, database_url: str, bus: BusUnderTest, prefix: str) -> None:
        self.options, self.workdir, self.database_url, self.prefix = options, workdir, database_url, prefix
        self.bus = bus
        self.config_path = workdir / "market-ingestor.toml"
        sim_port = free_port()
        write_config(self.config_path, options, bus, database_url, prefix, sim_port)
        self.pipeline = Pipeline(options, workdir, self.config_path, sim_port)
        self.servers = StackServer.of_stack()
        app_id = prefix.rstrip(".")
        self.groups = {"worker": app_id, "sink": f"{app_id}-sink"}
        trades, klines, indicators = (prefix + t for t in (Topics.TRADES, Topics.KLINES, Topics.INDICATORS))
        self.trades_topic = trades
        self.offsets = OffsetHistory(
            bus.reader(load_config(self.config_path).bus.nats, app_id, prefix),
            {"": [trades], self.groups["worker"]: [trades], self.groups["sink"]: [trades, klines, indicators]},
        )
        channels = ["kline.1m", *(f"indicator.{spec}" for spec in INDICATORS)]
        symbols = [f"{exchange}.{symbol}" for exchange in DIALECTS for symbol in SYMBOLS]
        self.updates = Updates()
        self.clients = [
            PushClient(self.pipeline.push_port, channels, symbols, self.updates) for _ in range(PUSH_CLIENTS)
        ]
        self.api = ApiReader(self.pipeline.api_port)
        self.faults: list[Fault] = []
        self.failures: list[str] = []
        # Recovery by Prometheus too (consumer lag back to 0), when it is installed.
        series = expected_series(options.bus, load_config(self.config_path).bus.kafka.partitions, options.workers)
        self.prometheus = LagWatch(workdir, self.pipeline.metrics_ports, series) if LagWatch.available() else None
        self.started = time.monotonic()

    # -- probes: what "recovered" means after each kind of fault

    def _probes(self, fault: Fault, since: float, since_wall: float) -> tuple[dict[str, Check], dict[str, Check]]:
        o = self.offsets
        progress: dict[str, Check] = {}
        lag: dict[str, Check] = {}
        hit = HIT_BY_OUTAGE[fault.target] if fault.kind == "stop" else {fault.target.split("-")[0]}
        if "ingest" in hit:
            progress["ingest"] = _sync(lambda: o.published_since(since, self.trades_topic))
        if "worker" in hit:
            worker_group = self.groups["worker"]
            progress["worker"] = _sync(lambda: o.committed_everywhere_since(since, worker_group))
            lag["worker"] = _sync(lambda: o.caught_up(worker_group, since))
        if "sink" in hit:
            progress["sink"] = self._grows(TRADES_SQL)
            sink_group = self.groups["sink"]
            lag["sink"] = _sync(lambda: o.caught_up(sink_group, since))
        if "push" in hit:
            progress["push"] = _sync(lambda: all(c.last_update > since for c in self.clients))
        if "api" in hit:
            progress["api"] = self._api_answers
        if self.prometheus is not None:
            for job in sorted(hit & {"worker", "sink"}):
                lag[f"{job} by prometheus"] = self.prometheus.caught_up(job, since_wall)
        return progress, lag

    async def _api_answers(self) -> bool:
        try:
            await self.api.klines(next(iter(DIALECTS)), SYMBOLS[0], "1m")
        except (RuntimeError, OSError, aiohttp.ClientError):
            return False
        return True

    def _grows(self, query: str) -> Check:
        """The query's number grows beyond its first answer after the fault ended."""
        start: list[int] = []

        async def check() -> bool:
            now = await db_value(self.database_url, query)
            if now is None:
                return False
            if not start:
                start.append(now)
                return False
            return now > start[0]

        return check

    # -- faults

    async def inject(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, time.monotonic() - self.started)
        began = time.monotonic()
        if kind == "kill":
            service = self.pipeline.services[target]
            service.kill()
            service.start()
        elif kind == "pause":
            service = self.pipeline.services[target]
            service.pause()
            await asyncio.sleep(self.options.pause_s)
            service.resume()
        else:
            server = self.servers[target]
            await server.stop()
            await asyncio.sleep(self.options.outage_s)
            await server.start()
        ended, ended_wall = time.monotonic(), time.time()
        fault.held_s = ended - began
        progress, lag = self._probes(fault, ended, ended_wall)
        both = await first_true(
            {**progress, **{f"lag {name}": check for name, check in lag.items()}}, ended, RECOVER_TIMEOUT_S
        )
        fault.progress_s = {name: both[name] for name in progress}
        fault.caught_up_s = {name: both[f"lag {name}"] for name in lag}
        return fault

    async def schedule(self) -> None:
        end = self.started + self.options.minutes * 60
        turn = worker_turn = 0
        limit = self.options.faults or sys.maxsize
        await asyncio.sleep(max(0.0, self.options.warmup_s - self.options.fault_every_s))
        if self.prometheus is not None:  # every member reports its lag by now
            counts = await self.prometheus.all_reported(RECOVER_TIMEOUT_S)
            print(f"# prometheus at {self.prometheus.server.url()}: lag series {counts}", flush=True)
            if counts != self.prometheus.baseline:
                self.failures.append(f"lag series before the first fault: {counts}, not {self.prometheus.baseline}")
        while time.monotonic() + self.options.fault_every_s < end and len(self.faults) < limit:
            await asyncio.sleep(self.options.fault_every_s)
            self.check_alive()
            kind, target = SCHEDULE[turn % len(SCHEDULE)]
            turn += 1
            if target == "worker":
                target = self.pipeline.workers[worker_turn % len(self.pipeline.workers)]
                worker_turn += 1
            elif target == "bus":
                target = self.bus.server
            fault = await self.inject(kind, target)
            self.faults.append(fault)
            recovery = f"progress {_times(fault.progress_s)}; caught up {_times(fault.caught_up_s)}"
            print(f"#   {fault.at_s:7.1f}s {kind} {target} ({fault.held_s:.1f} s): {recovery}", flush=True)
            if not fault.recovered:
                self.failures.append(
                    f"{kind} {target} at {fault.at_s:.0f} s: not recovered within {RECOVER_TIMEOUT_S} s"
                )
        await asyncio.sleep(
            max(0.0, end - time.monotonic()) if len(self.faults) < limit else self.options.fault_every_s
        )
        self.check_alive()

    def check_alive(self) -> None:
        for service in self.pipeline.all():
            if not service.alive():
                code = service.proc and service.proc.returncode
                self.failures.append(
                    f"{service.name} exited by itself ({code}, see {service.name}.{service.starts}.log)"
                )
                service.start()

    async def drain(self) -> None:
        """Until every stored kline is closed (the worker closes quiet windows by the wall clock) and the stored
        trades, klines and indicator values have not changed for DRAIN_STABLE_S."""
        last: tuple[int | None, ...] = ()
        started = stable_since = time.monotonic()
        changes: list[str] = []  # when the state last changed, and to what (the failure names the last few)
        deadline = started + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            state = tuple([await db_value(self.database_url, query) for query in DRAIN_SQL])
            if state != last:
                last, stable_since = state, time.monotonic()
                changes = [*changes[-5:], f"{stable_since - started:.0f} s: {state}"]
            elif state[-1] == 0 and time.monotonic() - stable_since >= DRAIN_STABLE_S:
                return
        conn = await asyncpg.connect(self.database_url)
        try:
            still_open = await conn.fetch(
                "SELECT exchange, symbol, interval, open_time FROM market_klines WHERE NOT closed ORDER BY open_time"
                " LIMIT 5"
            )
        finally:
            await conn.close()
        self.failures.append(
            f"the stored data did not settle within {DRAIN_TIMEOUT_S:.0f} s (trades, klines, indicators, open); "
            f"its last changes: {'; '.join(changes)}; open klines: {[tuple(r) for r in still_open]}"
        )

    async def run(self) -> Report:
        if self.prometheus is not None:
            await self.prometheus.start()
        else:
            print("# prometheus not on PATH: no recovery times by Prometheus", flush=True)
        for service in self.pipeline.all():
            service.start()
        background = [
            asyncio.ensure_future(self.offsets.run()),
            *(asyncio.ensure_future(c.run()) for c in self.clients),
        ]
        try:
            await self.schedule()
            rest_s = self.started + self.options.min_load_s - time.monotonic()
            if rest_s > 0:  # enough load for what the accounting checks (e.g. indicators over closed minutes)
                await asyncio.sleep(rest_s)
            sim_code = self.pipeline.simulator.terminate()
            await self.drain()
            users = await self.check_users()
        except BaseException:
            for service in self.pipeline.all():
                if service.alive():
                    service.kill()  # a failed or cancelled run leaves no service behind
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.offsets.reader.close()
            if self.prometheus is not None:
                await self.prometheus.stop()
        codes = {name: service.terminate() for name, service in self.pipeline.services.items()}
        codes["simulate"] = sim_code
        self.failures += [f"{name} exited {code}" for name, code in codes.items() if code != 0]
        return await self.account(codes, users)

    async def check_users(self) -> ClientAccount:
        """The push clients' final state against the stored klines; their indicator values and the API's against
        the offline computation over the final closed klines; the API's klines against the stored ones."""
        conn = await asyncpg.connect(self.database_url)
        try:
            stored = await stored_klines(conn)
        finally:
            await conn.close()
        closed = {key: values for key, (is_closed, values) in stored.items() if is_closed}
        offline = offline_indicators(closed, INDICATORS)
        latest = {key[:3]: key for key in sorted(stored)}
        # The clients get the last closings about when the sink stores them: wait for them to hold the last windows.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.updates.until(
                    lambda: all(c.state.klines.get(key, (None,))[0] for c in self.clients for key in latest.values())
                ),
                30,
            )
        account = ClientAccount()
        for n, client in enumerate(self.clients, 1):
            check_push_klines(account, n, client.state, stored)
            missing = [key for key in latest.values() if key not in client.state.klines]
            account.wrong += [f"push client {n}: has no kline of {key}" for key in missing[:3]]
            got = {key: values for key, (_, values) in client.state.indicators.items()}
            check_indicators(account, f"push client {n}", got, offline)
            account.wrong += [f"push client {n}: {error}" for error in client.errors[:3]]
        for exchange, symbol, interval in latest:
            api_klines = await self.api.klines(exchange, symbol, interval)
            mine = {key: value for key, value in stored.items() if key[:3] == (exchange, symbol, interval)}
            if api_klines != mine:
                account.wrong.append(f"api: klines of {exchange} {symbol} {interval} differ from the stored ones")
            for spec in INDICATORS:
                served = await self.api.indicators(spec, exchange, symbol, interval)
                check_indicators(account, "api", served, offline)
                expected = {k for k in offline if k[:4] == (exchange, symbol, interval, spec)}
                account.wrong += [f"api: no value for {key}" for key in sorted(expected - set(served))[:3]]
        return account

    async def account(self, codes: dict[str, int], users: ClientAccount) -> Report:
        records = list(read_journal(self.pipeline.journal))
        for fault in self.faults:
            if fault.target == "ingest":
                fault.progress_s["reconnected"] = reconnected_s(records, self.started + fault.at_s, DIALECTS)
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch("SELECT exchange, symbol, trade_id, price::text, qty::text FROM market_trades")
            stored = [StoredTrade(*row) for row in rows]
            stored_keys = {(s.exchange, s.symbol, s.trade_id) for s in stored}
            trades = account_trades(records, stored, IN_FLIGHT_S)
            checked, wrong = await check_all_klines(conn, self.config_path)
            delivered = delivered_trades(records, stored_keys, IN_FLIGHT_S)
            intervals = load_config(self.config_path).streams.intervals
            closed = {key: values for key, (is_closed, values) in (await stored_klines(conn)).items() if is_closed}
            truth = compare_klines(truth_klines(delivered, intervals), closed)
        finally:
            await conn.close()
        return Report(
            self.options, time.monotonic() - self.started, self.faults, trades, checked, wrong, truth, users,
            expected_dead_letters(records, stored_keys, IN_FLIGHT_S), await dead_letters(self.config_path, self.prefix),
            repeated_outputs(await published(self.config_path, self.prefix, (Topics.KLINES, Topics.INDICATORS))),
            codes, self.failures,
        )  # fmt: skip


Check = Callable[[], Awaitable[bool]]


def _sync(predicate: Callable[[], bool]) -> Check:
    async def check() -> bool:
        return predicate()

    return check


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


async def stored_klines(conn: asyncpg.Connection) -> dict[KlineKey, tuple[bool, KlineValues]]:
    """Every stored kline: whether it is closed, and its values as the model has them (Decimals from the exact
    numeric text)."""
    columns = ", ".join(
        f"{f}::text" if f not in ("trade_count", "first_trade_id", "last_trade_id") else f for f in KLINE_FIELDS
    )
    rows = await conn.fetch(
        f"SELECT exchange, symbol, interval, (extract(epoch FROM open_time) * 1000000)::bigint AS open_us, closed, "
        f"{columns} FROM market_klines"
    )
    return {
        (r["exchange"], r["symbol"], r["interval"], r["open_us"] * 1000): (r["closed"], kline_values(dict(r)))
        for r in rows
    }


async def dead_letters(config_path: Path, prefix: str) -> int:
    config = load_config(config_path)
    deliveries = await open_bus(config.bus).read_topic(f"{prefix}{Topics.DEADLETTER}")
    return sum(1 for d in deliveries if b'"deadletter"' in d.value)


async def published(config_path: Path, prefix: str, topics: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every event on ``topics`` as a ``read_committed`` reader gets it (a record holds one or a batch)."""
    bus = open_bus(load_config(config_path).bus)
    events: list[dict[str, Any]] = []
    for topic in topics:
        for delivery in await bus.read_topic(f"{prefix}{topic}"):
            value = json.loads(delivery.value)
            events += value if isinstance(value, list) else [value]
    return events


async def chaos(options: Options) -> Report:
    """Runs the whole chaos run on the dev stack (started if needed) and returns its report."""
    if options.bus == "nats" and options.guarantee == "exactly_once":
        raise ValueError("exactly_once needs Kafka transactions (docs/nats-worker.md): --guarantee at_least_once")
    stack = ensure_stack()
    workdir = Path(options.workdir or f"/tmp/chaos-{uuid.uuid4().hex[:6]}")
    os.makedirs(workdir, exist_ok=True)
    prefix = f"chaos{uuid.uuid4().hex[:6]}."
    db_name = f"chaos_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    await admin.close()
    database_url = stack.database_url.rsplit("/", 1)[0] + f"/{db_name}"
    await migrate(database_url)
    bus = bus_under_test(options.bus, stack, SESSION_TIMEOUT_MS / 1000)
    print(f"# chaos: {options.minutes} min, {options.rate} trades/s, {options.workers} worker(s) {options.guarantee} "
          f"on {options.bus}, workdir {workdir}, db {db_name}, prefix {prefix}", flush=True)  # fmt: skip
    return await Chaos(options, workdir, database_url, bus, prefix).run()


def _times(found: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {_seconds(s)}" for name, s in found.items()) or "-"


def _seconds(value: float | None) -> str:
    return "NOT RECOVERED" if value is None else f"{value:.1f}"


def print_report(r: Report) -> None:
    o, a = r.options, r.trades
    print(f"\n## chaos run: {r.duration_s:.0f} s, {o.rate} trades/s, 5 exchanges x {len(SYMBOLS)} symbols, "
          f"{o.workers} worker(s) {o.guarantee} on {o.bus}")  # fmt: skip
    print("| fault | target | at (s) | held (s) | progress again after (s) | caught up after (s) |")
    print("|---|---|---|---|---|---|")
    for f in r.faults:
        recovery = f"{_times(f.progress_s)} | {_times(f.caught_up_s)}"
        print(f"| {f.kind} | {f.target} | {f.at_s:.1f} | {f.held_s:.1f} | {recovery} |")
    owed, flying = r.dead_letters_expected
    table = {
        "faults injected": len(r.faults),
        "trades sent (distinct)": a.sent,
        "trades owed (not in flight at a fault)": a.owed,
        "trades stored": a.stored,
        "duplicated": a.duplicated,
        "lost": len(a.lost),
        "stored but never sent": len(a.never_sent),
        "stored with other text": len(a.changed),
        f"in flight at a fault (<= {IN_FLIGHT_S} s before a session died, or unread at a drop)": a.in_flight,
        "... of which stored": a.in_flight_stored,
        "... unread by the client when the exchange dropped the session": a.unread,
        "klines checked (stored trades)": r.klines_checked,
        "klines wrong": r.klines_wrong,
        "klines checked (simulator's trades)": r.truth.checked,
        "... wrong": len(r.truth.wrong),
        "... missing": len(r.truth.missing),
        f"push clients ({PUSH_CLIENTS}): closed klines checked against the stored ones": r.users.klines_checked,
        "indicator values checked (push clients, API) against the offline computation": r.users.indicators_checked,
        "push / API values wrong or missing": len(r.users.wrong),
        "dead letters expected (+ in flight)": f"{owed} (+{flying})",
        "dead letters found": r.dead_letters_found,
        "closed klines / indicator values published twice (same revision; exactly once: none)": len(r.repeated),
    }
    print("\n| measure | value |\n|---|---|")
    for name, value in table.items():
        print(f"| {name} | {value} |")
    print(f"# exit codes: {r.codes}")
    for failure in r.failures:
        print(f"FAILURE: {failure}")
    if not r.ok:
        print(f"# lost (first 10): {a.lost[:10]}\n# never sent: {a.never_sent[:10]}\n# changed: {a.changed[:10]}")
        print(f"# klines unlike the truth (stored, truth): {r.truth.wrong[:3]}\n# missing: {r.truth.missing[:5]}")
        for wrong in r.users.wrong[:10]:
            print(f"# {wrong}")
        print(f"# published twice (first 5): {r.repeated[:5]}")
    print("RESULT:", "PASS" if r.ok else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value) if value is not None else str, default=value)
    options = Options(**vars(parser.parse_args()))
    logging.basicConfig(level=logging.WARNING)
    for bus_logger in ("aiokafka", "nats"):  # the bus is a fault target: its absence is expected
        logging.getLogger(bus_logger).setLevel(logging.CRITICAL)
    report = asyncio.run(chaos(options))
    print_report(report)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
