"""The metrics server over real HTTP: the registry's metrics in the format asked for, health as 200/503 with its
details, and a port that cannot be bound named by its setting."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import Counter

from market_ingestor.errors import ConfigError
from market_ingestor.observability import Health, MetricsServer
from metrics_helpers import Scrape

SERVED = Counter("test_observability_served_total", "A counter of this test")


async def test_metrics_and_health_over_http():
    healthy = {"ok": False}

    def health() -> Health:
        return Health(healthy["ok"], {"state": "running" if healthy["ok"] else "starting", "partitions": 3})

    SERVED.inc(5)
    async with MetricsServer("127.0.0.1", 0, health, "test.metrics_port") as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(base + "/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            assert Scrape(await response.text()).value("test_observability_served_total") >= 5
        openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(base + "/metrics", headers=openmetrics) as response:
            assert response.content_type == "application/openmetrics-text"
            assert (await response.text()).endswith("# EOF\n")
        async with http.get(base + "/healthz") as response:
            assert (response.status, await response.json()) == (
                503,
                {"status": "unavailable", "state": "starting", "partitions": 3},
            )
        healthy["ok"] = True
        async with http.get(base + "/healthz") as response:
            assert (response.status, (await response.json())["status"]) == (200, "ok")
        async with http.get(base + "/other") as response:
            assert response.status == 404


async def test_a_port_in_use_is_a_config_error_naming_the_setting():
    async with MetricsServer("127.0.0.1", 0, lambda: Health(True), "first.metrics_port") as first:
        second = MetricsServer("127.0.0.1", first.port, lambda: Health(True), "sink.metrics_port")
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{first.port}.*set sink\.metrics_port"):
            await second.start()
