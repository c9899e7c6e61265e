"""API keys on the dev stack's PostgreSQL: the apikeys commands, 401 without a valid key, 429 over a key's rate,
verification cached (one query per key and TTL) and revocation effective within the TTL."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from api_helpers import serve
from click.testing import CliRunner

from market_ingestor.api.keys import KeyVerifier, create_key, revoke_key
from market_ingestor.api.ratelimit import RateLimiter
from market_ingestor.cli.main import cli
from market_ingestor.config import ApiConfig, Config, DatabaseConfig

pytestmark = pytest.mark.postgres

TTL_S = 0.3


def keyed_config(database_url: str) -> Config:
    return Config(
        database=DatabaseConfig(url=database_url),
        api=ApiConfig(auth_enabled=True, key_cache_ttl_s=TTL_S, rate_limit_per_s=1000, rate_limit_burst=1000),
    )


async def new_key(database_url: str, name: str, rate: int | None = None, burst: int | None = None) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        return (await create_key(connection, name, rate, burst)).key
    finally:
        await connection.close()


async def status_of(client: TestClient, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path, headers=headers)
    return response.status, await response.json()


async def test_requests_need_a_valid_key_except_health_readiness_and_the_document(database_url):
    key = await new_key(database_url, "alice")
    async with serve(keyed_config(database_url)) as (client, _):
        symbols = "/api/v1/symbols"
        response = await client.get(symbols)
        status, body = response.status, await response.json()
        assert (status, body["parameter"]) == (401, None)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "API key is required" in body["error"]
        for wrong in ("nonsense", key[:-1] + ("A" if key[-1] != "A" else "B"), "mi_000000000000_" + "x" * 43):
            assert (await status_of(client, symbols, **{"X-API-Key": wrong}))[0] == 401, wrong
        assert (await status_of(client, symbols, **{"X-API-Key": key}))[0] == 200
        assert (await status_of(client, symbols, Authorization=f"Bearer {key}"))[0] == 200
        for public in ("/healthz", "/readyz", "/openapi.json"):
            response = await client.get(public)
            assert response.status == 200, public
        # Auth comes before parameter checks: a keyless caller learns nothing about the parameters.
        assert (await status_of(client, "/api/v1/klines/nyse/X?interval=zz"))[0] == 401


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_do_not(database_url):
    slow = await new_key(database_url, "slow", rate=1, burst=2)
    other = await new_key(database_url, "other")
    async with serve(keyed_config(database_url)) as (client, _):
        statuses = [(await client.get("/api/v1/symbols", headers={"X-API-Key": slow})).status for _ in range(3)]
        assert statuses == [200, 200, 429]
        response = await client.get("/api/v1/symbols", headers={"X-API-Key": slow})
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        body = await response.json()
        assert "rate limit of key" in body["error"] and "1/s, burst 2" in body["error"]
        assert (await client.get("/api/v1/symbols", headers={"X-API-Key": other})).status == 200


def test_the_token_bucket_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("k", 2, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", 2, 3) == pytest.approx(0.5)
    now[0] += 0.5  # one token back
    assert limiter.take("k", 2, 3) == 0.0
    assert limiter.take("k", 2, 3) > 0
    now[0] += 100.0  # never more than the burst
    assert [limiter.take("k", 2, 3) == 0.0 for _ in range(4)] == [True, True, True, False]


class CountingDb:
    """The real pool, counting the queries that reach it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.queries += 1
        return await self.pool.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        raise AssertionError("not used by verify")

    async def execute(self, query: str, *args: Any) -> str:
        raise AssertionError("not used by verify")


async def test_verification_is_cached_and_a_revoked_key_stops_working_within_the_ttl(database_url):
    key = await new_key(database_url, "bob")
    key_id = key.split("_")[1]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        db = CountingDb(pool)
        verifier = KeyVerifier(db, ttl_s=TTL_S)
        infos = await asyncio.gather(*(verifier.verify(key) for _ in range(50)))
        assert {info.name for info in infos if info is not None} == {"bob"} and None not in infos
        assert await verifier.verify(key.replace(key_id, "0" * 12)) is None
        assert db.queries == 2  # one per id, however many requests
        assert await revoke_key(pool, key_id)
        deadline = time.monotonic() + TTL_S + 2.0
        while await verifier.verify(key) is not None:
            assert time.monotonic() < deadline, "a revoked key still works after the cache TTL"
            await asyncio.sleep(0.05)
    finally:
        await pool.close()


async def test_a_revoked_key_is_refused_by_the_running_api(database_url):
    key = await new_key(database_url, "carol")
    async with serve(keyed_config(database_url)) as (client, _):
        assert (await status_of(client, "/api/v1/symbols", **{"X-API-Key": key}))[0] == 200
        connection = await asyncpg.connect(database_url)
        try:
            await revoke_key(connection, key.split("_")[1])
        finally:
            await connection.close()
        deadline = time.monotonic() + TTL_S + 2.0
        while (await status_of(client, "/api/v1/symbols", **{"X-API-Key": key}))[0] != 401:
            assert time.monotonic() < deadline, "the API still accepts a revoked key after the cache TTL"
            await asyncio.sleep(0.05)


def test_apikeys_create_list_revoke(database_url, tmp_path: Path):
    config = tmp_path / "market-ingestor.toml"
    config.write_text(f'[log]\nlevel = "WARNING"\n[database]\nurl = "{database_url}"\n')
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, ["--config", str(config), "apikeys", *args])

    created = invoke("create", "--name", "dashboard", "--rate-limit", "5")
    assert created.exit_code == 0, created.output
    key = re.search(r"^key:\s+(mi_\S+)$", created.output, re.M).group(1)  # type: ignore[union-attr]
    key_id = re.search(r"^id:\s+(\w+)$", created.output, re.M).group(1)  # type: ignore[union-attr]
    assert key.startswith(f"mi_{key_id}_")

    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if line.startswith(key_id))
    assert "dashboard" in line and " 5 " in f"{line} " and line.split()[-3] == "-"  # not revoked
    assert key not in listed.output and key.split("_", 2)[2] not in listed.output

    revoked = invoke("revoke", key_id)
    assert revoked.exit_code == 0, revoked.output
    as_json = invoke("list", "--json")
    record = next(line for line in as_json.output.splitlines() if key_id in line)
    assert '"revoked_at":null' not in record and '"name":"dashboard"' in record

    again = invoke("revoke", key_id)
    assert again.exit_code == 1 and f"no active key '{key_id}'" in again.output
