"""The chaos run's recovery by Prometheus (bench/chaos_prometheus.py): the rule on hand-made answers, and the
PromQL against a real Prometheus scraping lag gauges this test sets."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos_prometheus import LagWatch, caught_up, expected_series, scrape_jobs
from metrics_helpers import free_port

NOW = 1_800_000_000.0  # float-ok: wall-clock seconds, as Prometheus answers them


def test_caught_up_needs_zero_lag_every_series_back_and_samples_after_the_fault() -> None:
    good = {"sum": 0.0, "count": 4.0, "oldest": NOW + 2.5}  # float-ok: Prometheus's answer
    assert caught_up(good, baseline=4, since_wall_s=NOW)
    assert not caught_up({**good, "sum": 3.0}, baseline=4, since_wall_s=NOW)  # float-ok
    assert not caught_up({**good, "count": 3.0}, baseline=4, since_wall_s=NOW)  # a member's series still stale
    assert not caught_up({**good, "oldest": NOW + 0.5}, baseline=4, since_wall_s=NOW)  # sampled before the end
    assert not caught_up({}, baseline=4, since_wall_s=NOW)  # no series at all is not "0"


def test_the_whole_groups_series_per_bus() -> None:
    assert expected_series("kafka", partitions=4, workers=2) == {"worker": 8, "sink": 12}
    assert expected_series("nats", partitions=4, workers=2) == {"worker": 4, "sink": 3}


def test_scrape_jobs_put_every_worker_under_one_job() -> None:
    jobs = scrape_jobs({"worker": [9101, 9102], "sink": [9103]})
    assert [(j.name, j.targets) for j in jobs] == [
        ("worker", ("127.0.0.1:9101", "127.0.0.1:9102")),
        ("sink", ("127.0.0.1:9103",)),
    ]


@pytest.fixture
async def lag_gauges() -> AsyncIterator[tuple[Gauge, dict[str, list[int]]]]:
    registry = CollectorRegistry()
    gauge = Gauge("consumer_lag", "test lag", ["group", "topic", "partition"], registry=registry)
    worker_port, sink_port = free_port(), free_port()
    servers = [start_http_server(port, "127.0.0.1", registry) for port in (worker_port, sink_port)]
    try:
        yield gauge, {"worker": [worker_port], "sink": [sink_port]}
    finally:
        for server, thread in servers:
            server.shutdown()
            thread.join()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not on PATH (install-system-deps.sh)")
async def test_the_query_reads_lag_from_a_real_prometheus(
    lag_gauges: tuple[Gauge, dict[str, list[int]]], tmp_path: Path
) -> None:
    gauge, ports = lag_gauges
    for partition in ("0", "1"):
        gauge.labels("g", "trades", partition).set(7)
    watch = LagWatch(tmp_path, ports, {"worker": 2, "sink": 2})
    await watch.start()
    try:
        # Both jobs scrape the same registry here: each sees the two partitions.
        assert await watch.all_reported(30) == {"worker": 2, "sink": 2}
        lagging = await watch.lag("worker")
        assert lagging["sum"] == 14 and lagging["count"] == 2
        since = time.time()
        check = watch.caught_up("worker", since)
        assert not await check()
        gauge.labels("g", "trades", "0").set(0)
        gauge.remove("g", "trades", "1")  # the partition moved away: one series short of the baseline
        await _until_scraped(watch, since)
        assert not await check()
        gauge.labels("g", "trades", "1").set(0)
        deadline = time.monotonic() + 30
        while not await check():  # once scraped after `since` plus the lag's own sampling interval
            assert time.monotonic() < deadline, await watch.lag("worker")
            await asyncio.sleep(0.2)
    finally:
        await watch.stop()
    assert watch.server.live_pid() is None


async def _until_scraped(watch: LagWatch, since: float) -> None:  # float-ok: wall-clock seconds
    deadline = time.monotonic() + 30
    while (await watch.lag("worker")).get("oldest", 0) <= since + 1.5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
