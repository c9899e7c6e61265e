"""The query API serves /metrics on its own port (no key needed): each answered request is counted under its
declared route and status, anything else under ``unmatched``."""

from __future__ import annotations

import pytest
from api_helpers import serve

from market_ingestor.api.spec import routes
from market_ingestor.config import ApiConfig, Config, DatabaseConfig
from metrics_helpers import Scrape

pytestmark = pytest.mark.postgres


async def test_requests_are_counted_by_route_and_status(database_url):
    config = Config(database=DatabaseConfig(url=database_url), api=ApiConfig(auth_enabled=True))
    async with serve(config) as (client, _):

        async def scrape() -> Scrape:
            response = await client.get("/metrics")  # public, like /healthz
            assert response.status == 200 and response.content_type == "text/plain"
            return Scrape(await response.text())

        before = await scrape()
        for _ in range(3):
            assert (await client.get("/api/v1/symbols")).status == 401  # no key
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/no/such/route")).status == 404
        after = await scrape()

    def moved(route: str, status: str) -> float:  # float-ok: a sample value
        labels = {"route": route, "status": status}
        return after.value("api_requests_total", **labels) - before.value("api_requests_total", **labels)

    assert moved("symbols", "401") == 3 and moved("healthz", "200") == 1 and moved("unmatched", "404") == 1
    assert moved("metrics", "200") == 1  # the first scrape, counted once it was answered
    assert after.value("api_request_seconds_count", route="symbols") >= 3
    declared = {route.name for route in routes(config)} | {"unmatched"}
    assert {sample.labels["route"] for sample in after.matching("api_requests_total")} <= declared  # bounded
