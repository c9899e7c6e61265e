"""The chaos run's recovery times as Prometheus sees them (issue 13): consumer lag back to 0.

A Prometheus of the run's own (the dev stack's ``PrometheusServer``, on a free port, its state under the run's
workdir) scrapes every service of the run each second, as the compose stack's Prometheus scrapes them in
production. After a fault, a consumer group (``job`` worker or sink) has caught up, by Prometheus, at the first
poll where, in samples scraped after the fault ended plus one lag sampling interval:

- ``sum(consumer_lag{job=J})`` is 0, and
- ``count(consumer_lag{job=J})`` is the whole group's (:func:`expected_series`: every input partition on Kafka,
  every reader on NATS, is reported again; a killed or paused member's series are stale, not 0).

Without ``prometheus`` on PATH the run goes on without these times and says so.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

from chaos_services import free_port, track, untrack
from market_ingestor.devstack.prometheus import PrometheusServer, own_prometheus_config
from market_ingestor.devstack.scrape import ScrapeJob
from market_ingestor.errors import DevStackError

SCRAPE_INTERVAL_S = 1
#: The services' ``metrics.sample_interval_s`` in the run: how old a lag value may be when it is scraped.
LAG_SAMPLE_S = 1.0


def scrape_jobs(ports: Mapping[str, Sequence[int]]) -> tuple[ScrapeJob, ...]:
    """One job per service name (``worker`` for all workers), scraping loopback at each of its metrics ports."""
    return tuple(ScrapeJob(job, tuple(f"127.0.0.1:{port}" for port in job_ports)) for job, job_ports in ports.items())


def lag_query(job: str) -> str:
    """One vector of three series, ``what`` = sum, count and oldest sample time (s) of ``consumer_lag{job}``."""
    selector = f'consumer_lag{{job="{job}"}}'
    return " or ".join(
        f'label_replace({fn}, "what", "{what}", "", "")'
        for what, fn in (("sum", f"sum({selector})"), ("count", f"count({selector})"),
                         ("oldest", f"min(timestamp({selector}))"))
    )  # fmt: skip


def expected_series(bus: str, partitions: int, workers: int) -> dict[str, int]:
    """The ``consumer_lag`` series of the whole group, per job. Kafka: one per assigned input partition (the
    worker reads trades and klines, the sink trades, klines and indicator values). NATS: one per reader, i.e.
    each worker's two stages (each reads its whole stream) and the sink's three streams."""
    if bus == "kafka":
        return {"worker": 2 * partitions, "sink": 3 * partitions}
    return {"worker": 2 * workers, "sink": 3}


def caught_up(values: Mapping[str, float], baseline: int, since_wall_s: float) -> bool:
    """Whether the job's lag series, as :func:`lag_query` returns them, say "caught up" after ``since_wall_s``."""
    if not {"sum", "count", "oldest"} <= values.keys():  # float-ok: Prometheus answers floats; counts and seconds
        return False
    fresh = values["oldest"] > since_wall_s + LAG_SAMPLE_S
    return fresh and values["sum"] == 0 and values["count"] >= baseline


class LagWatch:
    """The run's Prometheus, and checks "lag back to 0" per job for :func:`chaos_services.first_true`."""

    def __init__(self, workdir: Path, ports: Mapping[str, Sequence[int]], series: Mapping[str, int]) -> None:
        self.server = PrometheusServer(
            own_prometheus_config(workdir / "devstack", free_port),
            scrape_jobs(ports),
            scrape_interval_s=SCRAPE_INTERVAL_S,
        )
        self.baseline = dict(series)  # lag series per job of the whole group (expected_series)
        self._http: aiohttp.ClientSession | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("prometheus") is not None

    async def start(self) -> None:
        track(self, "prometheus", self.server.stop)
        if not await asyncio.to_thread(self.server.ensure, 60.0):
            raise DevStackError(f"the chaos run's Prometheus did not get ready (see {self.server.logs[0]})")
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        await asyncio.to_thread(self.server.stop)
        untrack(self)

    async def lag(self, job: str) -> dict[str, float]:  # float-ok: Prometheus's answer
        """The job's lag sum, series count and oldest sample time now ({} while Prometheus has none)."""
        assert self._http is not None, "start() first"
        try:
            async with self._http.get(
                f"{self.server.url()}/api/v1/query", params={"query": lag_query(job)}
            ) as response:
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        if answer.get("status") != "success":
            return {}
        return {r["metric"]["what"]: float(r["value"][1]) for r in answer["data"]["result"]}  # float-ok

    async def all_reported(self, timeout_s: float) -> dict[str, int]:
        """Waits until every job reports all its lag series (before the first fault: a worker group still
        rebalancing or restoring its tables reports none yet); returns the last counts."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = {job: int((await self.lag(job)).get("count", 0)) for job in self.baseline}
            if all(counts[job] >= n for job, n in self.baseline.items()) or time.monotonic() >= deadline:
                return counts
            await asyncio.sleep(SCRAPE_INTERVAL_S)

    def caught_up(self, job: str, since_wall_s: float) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return caught_up(await self.lag(job), self.baseline[job], since_wall_s)

        return check
