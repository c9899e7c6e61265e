"""The Grafana dashboards' PromQL, evaluated by a real Prometheus on the live pipeline.

``up --simulate --with all`` runs the simulator, ingest, worker, sink, push and api; a push client subscribes and the
API answers a few queries, so every stage has had real traffic. The dev stack's Prometheus (its own port and state
dir, scraping every second) scrapes them from the same config; once every target is up, each ``targets[].expr`` of
grafana/dashboards/*.json goes through ``/api/v1/query`` and must return at least one series.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from db_helpers import fresh_database
from market_ingestor.config import Config, load_config
from market_ingestor.devstack.prometheus import PrometheusServer, own_prometheus_config
from market_ingestor.devstack.scrape import metrics_ports, pipeline_jobs
from metrics_helpers import answering, free_port, listening, until

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus not on PATH (Debian: apt-get install prometheus; scripts/install-system-deps.sh does)",
    ),
]

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
SCRAPE_INTERVAL_S = 1
# Grafana's variables in the PromQL: $__rate_interval is at least four scrape intervals; 10 s holds enough samples
# for rate() and increase() a few seconds after a series appears.
VARIABLES = {"$__rate_interval": "10s", "$__interval": "1s", "$interval": "1s", "$exchange": "binance"}
# Expressions with no series after normal traffic, and why that is right. Keep it empty where a metric can exist at
# zero from the start instead.
ALLOWED_EMPTY = {
    "sum(rate(worker_indicator_values_total[$__rate_interval]))": "indicators are computed on closed klines only: the "
    "first 1m kline of the run closes at the next minute boundary, up to a minute later than this test waits",
    "sum by (exchange, symbol, kind) (increase(market_sequence_gaps_total[$__rate_interval]))": "labelled by symbol "
    "(up to metrics.max_symbols) and gap kind: a series appears with the first gap, the simulator's faults are off",
    "sum by (reason) (increase(worker_dead_letters_total[$__rate_interval]))": "labelled by exchange, symbol and "
    "reason: a series appears with the first dead-lettered trade, and normal traffic has none",
}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where: "dashboard / panel", expr) for every PromQL target of every dashboard."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        stack = list(dashboard["panels"])
        while stack:
            panel = stack.pop(0)
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                if "expr" in target:
                    yield f"{path.name} / {panel['title']}", target["expr"]


def substituted(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before a shorter prefix of it
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable without a value here: {expr}"
    return expr


def test_every_dashboard_query_is_found_and_filled_in():
    queries = list(dashboard_queries())
    assert len(queries) > 30  # "Pipeline health" alone has more; a parsing slip would find none
    expr = 'rate(x[$__rate_interval]) + y{exchange="$exchange"}'
    assert substituted(expr) == 'rate(x[10s]) + y{exchange="binance"}'


@pytest.fixture
async def pipeline(dev_stack, tmp_path, monkeypatch) -> AsyncIterator[Config]:
    """``up --simulate --with all`` on a database, topics and ports of its own; yields its config."""
    prefix = f"m{uuid.uuid4().hex[:8]}."
    # The environment wins over the file (tests/conftest.py sets these to 0); the children inherit it.
    for section in ("INGEST", "STREAMS", "SINK", "PUSH"):
        monkeypatch.setenv(f"MARKET_INGESTOR__{section}__METRICS_PORT", str(free_port()))
    async with fresh_database(dev_stack.database_url, "prometheus", migrated=True) as database_url:
        path = tmp_path / "market-ingestor.toml"
        path.write_text(
            f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n'
            f'[bus.kafka]\nbootstrap = "{dev_stack.kafka_bootstrap}"\npartitions = 2\n'
            f'[database]\nurl = "{database_url}"\n'
            f'[streams]\napp_id = "{prefix.rstrip(".")}"\ndata_dir = "{tmp_path / "worker"}"\nintervals = ["1m"]\n'
            'indicators = ["rsi_14"]\n'
            f"[api]\nport = {free_port()}\nauth_enabled = false\n"
            f'[push]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            '[metrics]\nhost = "127.0.0.1"\nsample_interval_s = 1.0\n'
            '[exchanges.binance]\nsymbols = ["BTCUSDT", "ETHUSDT"]\n[exchanges.okx]\nsymbols = ["BTCUSDT"]\n'
        )
        stderr_path = tmp_path / "up.stderr"
        with stderr_path.open("wb") as stderr:
            up = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "market_ingestor.cli.main", "--config", str(path),
                "up", "--simulate", "--port", "0", "--rate", "200", "--with", "all",
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
            try:
                assert up.stdout is not None
                banner = await asyncio.wait_for(up.stdout.readline(), 90)
                assert banner.startswith(b"pipeline running"), stderr_path.read_text()[-3000:]
                yield load_config(path)
                up.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(up.wait(), 120) == 0, stderr_path.read_text()[-3000:]
            finally:
                if up.returncode is None:
                    up.kill()
                    await up.wait()


@pytest.fixture
async def prometheus(pipeline: Config, tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    server = PrometheusServer(
        own_prometheus_config(tmp_path / "devstack", free_port),
        pipeline_jobs(pipeline),
        scrape_interval_s=SCRAPE_INTERVAL_S,
    )
    try:
        assert await asyncio.to_thread(server.ensure, 60.0)
        yield server
    finally:
        pid = server.live_pid()
        await asyncio.to_thread(server.stop)
        assert pid is None or server.live_pid() is None


async def _get(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with http.get(url, params=params) as response:
        assert response.status == 200, f"{url}: {response.status} {await response.text()}"
        return await response.json()


async def _poll(what: str, timeout_s: int, check: Any) -> Any:
    """Polls an external server's state (``check`` returns a truthy result when reached) until a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result, done = await check()
        if done:
            return result
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s: {result}"
        await asyncio.sleep(0.5)


async def _traffic(http: aiohttp.ClientSession, config: Config) -> None:
    """A push client subscribed to live trades that has received one, and answered API queries."""
    for service, port in metrics_ports(config).items():
        await until(lambda port=port: answering(port), f"{service} healthy", 90)  # type: ignore[misc]
    await until(lambda: listening(config.push.port), "the push gateway's WebSocket port listening", 60)
    async with http.ws_connect(f"ws://127.0.0.1:{config.push.port}/") as ws:
        await ws.send_json({"action": "subscribe", "channels": ["trade"], "symbols": ["binance.BTCUSDT"]})
        async with asyncio.timeout(60):
            async for message in ws:
                if json.loads(message.data).get("type") == "update":
                    break
    api = f"http://127.0.0.1:{config.api.port}"
    await _get(http, f"{api}/healthz")
    await _get(http, f"{api}/openapi.json")


async def test_every_dashboard_query_returns_series_from_the_running_services(pipeline, prometheus):
    base = prometheus.url()
    queries = [(where, expr, substituted(expr)) for where, expr in dashboard_queries()]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await _traffic(http, pipeline)

        async def targets() -> tuple[dict[str, str], bool]:
            active = (await _get(http, f"{base}/api/v1/targets", state="active"))["data"]["activeTargets"]
            health = {target["labels"]["job"]: target["health"] for target in active}
            return health, set(health) == {"ingest", "worker", "sink", "push", "api", "prometheus"} and all(
                state == "up" for state in health.values()
            )

        await _poll("every target up", 60, targets)

        async def empty() -> tuple[dict[str, str], bool]:
            found = {}
            for where, expr, query in queries:
                answer = await _get(http, f"{base}/api/v1/query", query=query)
                if not answer["data"]["result"] and expr not in ALLOWED_EMPTY:
                    found[expr] = where
            return found, not found

        # The services' counters need two scrapes inside the rate window after their first increment.
        missing = await _poll("a series for every dashboard query", 45, empty)
        assert not missing
