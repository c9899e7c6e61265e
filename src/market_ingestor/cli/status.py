"""``up``'s console: a compact status line every few seconds, read from the services' ``/metrics``, and the
warnings and errors of every service (their full logs go to files, :func:`log_dir`).

The pure parts (:func:`totals`, :func:`status_line`, :func:`console_line`) are what the tests check; :class:`Status`
scrapes the endpoints and prints.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import click
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from market_ingestor.devstack.config import StackConfig
from market_ingestor.jsontext import text
from market_ingestor.logs import record_fields

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0  # float-ok: a duration
CONSOLE_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
_KV_LEVEL = re.compile(r"(?:^| )level=(WARNING|ERROR|CRITICAL)(?: |$)")
_CONSOLE_MAX_CHARS = 300
# Warnings that are part of normal operation while consumer groups form (they stay in the log files).
_ROUTINE = ("because it is rebalancing",)
# What the line shows, from which sample of which service's /metrics (summed over their labels).
Metric = tuple[str, str, dict[str, str]]  # (service, sample name, labels it must have)
_TRADES: Metric = ("ingest", "market_events_total", {"type": "Trade"})
_KLINES: Metric = ("worker", "worker_klines_total", {})  # closed, corrected and in-progress: what it sent
_ROWS: Metric = ("sink", "db_insert_total", {})
_LAG: tuple[Metric, ...] = (("worker", "consumer_lag", {}), ("sink", "consumer_lag", {}))
_CLIENTS: Metric = ("push", "ws_clients", {})


def log_dir() -> Path:
    """Where ``up`` writes the full log of each service: ``logs/`` in the dev stack's directory (``.devstack``)."""
    return StackConfig.from_env().state_dir / "logs"


@dataclass(frozen=True, slots=True)
class Sample:
    """The services' metrics at one moment: (service, sample name, labels) summed, as :func:`totals` gives."""

    at_s: float  # float-ok: monotonic seconds
    values: Mapping[str, Mapping[str, list[tuple[dict[str, str], float]]]] = field(default_factory=dict)

    def total(self, service: str, name: str, labels: Mapping[str, str]) -> float | None:  # float-ok: a metric
        samples = self.values.get(service, {}).get(name)
        if samples is None:
            return None
        return sum(value for have, value in samples if all(have.get(k) == v for k, v in labels.items()))


def totals(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A ``/metrics`` text -> sample name -> its (labels, value) pairs."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _count(value: float | None) -> str:  # float-ok: a metric
    return "-" if value is None else f"{value:,.0f}"


def status_line(previous: Sample | None, current: Sample) -> str:
    """``trades 212/s in | klines 36/s | rows stored 12,345 | lag 3 | push clients 0``; "-" where a service does
    not run or did not answer, rates only from the second sample on."""

    def rate(what: Metric) -> str:
        now = current.total(*what)
        before = previous.total(*what) if previous is not None else None
        elapsed = current.at_s - previous.at_s if previous is not None else 0.0
        if now is None or before is None or elapsed <= 0:
            return "-"
        return f"{max(now - before, 0) / elapsed:,.0f}/s"

    lags = [current.total(*what) for what in _LAG]
    known = [lag for lag in lags if lag is not None]
    lag = _count(sum(known)) if known else "-"
    return (
        f"trades {rate(_TRADES)} in | klines {rate(_KLINES)} | rows stored {_count(current.total(*_ROWS))} | "
        f"lag {lag} | push clients {_count(current.total(*_CLIENTS))}"
    )


def console_line(service: str, line: str) -> str | None:
    """The console's form of one log line of ``service`` (JSON or key=value, ``logs.py``): warnings and errors
    only (but the routine ones of a forming consumer group), on one line; None for anything else (it is in the
    service's log file)."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            fields = msgspec.json.decode(line)
        except msgspec.DecodeError:
            return None
        if not isinstance(fields, dict) or fields.get("level") not in CONSOLE_LEVELS:
            return None
        if str(fields.get("event", "")).endswith(_ROUTINE):
            return None
        return console_text(service, fields)
    if _KV_LEVEL.search(line):
        return f"{service}: {line}"[:_CONSOLE_MAX_CHARS]
    return None


def console_text(service: str, fields: Mapping[str, object]) -> str:
    """``worker: WARNING event key=value ...`` (a traceback shows its last line only)."""
    extra = []
    for key, value in fields.items():
        if key in ("ts", "level", "logger", "event"):
            continue
        shown = text(value) if not isinstance(value, str) else value
        if key == "exc":
            shown = shown.strip().splitlines()[-1] if shown.strip() else shown
        extra.append(f"{key}={shown}")
    out = f"{service}: {fields.get('level')} {fields.get('event')}"
    if extra:
        out += " " + " ".join(extra)
    return out[:_CONSOLE_MAX_CHARS]


class ConsoleFormatter(logging.Formatter):
    """The in-process services' (ingest, the simulator) warnings and errors, in :func:`console_text`'s form."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        return console_text(self.service, record_fields(record))


class Status:
    """Scrapes ``ports`` (service -> /metrics port on 127.0.0.1) every ``interval_s`` and prints the line."""

    def __init__(
        self,
        ports: Mapping[str, int],
        interval_s: float = STATUS_INTERVAL_S,  # float-ok: a duration
        echo: Callable[[str], None] = click.echo,
    ) -> None:
        self.ports = dict(ports)
        self.interval_s = interval_s
        self.echo = echo

    async def sample(self, session: aiohttp.ClientSession) -> Sample:
        async def one(port: int) -> dict[str, list[tuple[dict[str, str], float]]] | None:
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    return totals(await response.text()) if response.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None  # not up yet, or stopping: its figures show as "-"

        names = list(self.ports)
        found = await asyncio.gather(*(one(self.ports[name]) for name in names))
        return Sample(time.monotonic(), {name: got for name, got in zip(names, found, strict=True) if got is not None})

    async def run(self) -> None:
        """Prints a line every ``interval_s`` until cancelled."""
        previous: Sample | None = None
        timeout = aiohttp.ClientTimeout(total=max(self.interval_s - 0.5, 1.0))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(self.interval_s)
                current = await self.sample(session)
                self.echo(f"{time.strftime('%H:%M:%S')}  {status_line(previous, current)}")
                previous = current
