"""The whole pipeline on NATS JetStream from one command: ``up --simulate --with all`` with ``bus.kind = "nats"``
starts every service (ingest, worker, sink, push, api); trades and klines reach the database, the API's ticker and
a push client, and SIGINT stops everything with exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import aiohttp
import asyncpg
import msgspec
import pytest

from db_helpers import fresh_database
from metrics_helpers import free_port, listening

pytestmark = [pytest.mark.nats, pytest.mark.postgres]


async def _rows(url: str, table: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    except asyncpg.UndefinedTableError:
        return 0  # the sink has not migrated the schema yet
    finally:
        await connection.close()


async def test_up_with_all_services_runs_the_pipeline_on_nats_and_exits_0(dev_stack, tmp_path):
    prefix = f"u{uuid.uuid4().hex[:8]}."
    api_port, push_port = free_port(), free_port()
    async with fresh_database(dev_stack.database_url, "upnats") as database_url:
        config = tmp_path / "market-ingestor.toml"
        config.write_text(
            f'[bus]\nkind = "nats"\ntopic_prefix = "{prefix}"\n[bus.nats]\nurl = "{dev_stack.nats_url}"\n'
            f'lease_ttl_s = 3.0\n[database]\nurl = "{database_url}"\n'
            f'[streams]\napp_id = "{prefix.rstrip(".")}"\nintervals = ["1m"]\nupdate_interval_ms = 100\n'
            f"metrics_port = {free_port()}\n[sink]\nflush_interval_s = 0.2\nmetrics_port = {free_port()}\n"
            f'[api]\nhost = "127.0.0.1"\nport = {api_port}\nauth_enabled = false\n'
            f'[push]\nhost = "127.0.0.1"\nport = {push_port}\nmetrics_port = {free_port()}\n'
            f'[ingest]\nmetrics_port = {free_port()}\n[exchanges.binance]\nsymbols = ["BTCUSDT"]\n'
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DATABASE_URL": database_url, "NATS_URL": dev_stack.nats_url}
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config),
            "up", "--simulate", "--port", "0", "--rate", "200", "--with", "all",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        said = bytearray()

        async def drain() -> None:
            assert up.stderr is not None
            while chunk := await up.stderr.read(65536):
                said.extend(chunk)
                del said[:-65536]

        draining = asyncio.ensure_future(drain())

        async def alive() -> None:
            if up.returncode is not None:
                await draining
                pytest.fail(f"up exited with {up.returncode}: {said.decode(errors='replace')[-3000:]}")

        async def until(what: str, check) -> None:  # type: ignore[no-untyped-def]
            async def poll() -> None:
                while not await check():
                    await alive()
                    await asyncio.sleep(0.5)

            try:
                await asyncio.wait_for(poll(), 120)
            except TimeoutError:
                pytest.fail(f"{what} within 120 s; up said: {said.decode(errors='replace')[-3000:]}")

        try:
            async with aiohttp.ClientSession() as http:

                async def stored() -> bool:
                    return (
                        await _rows(database_url, "market_trades") > 0
                        and await _rows(database_url, "market_klines") > 0
                    )

                await until("trades and klines stored", stored)

                async def ticker() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{api_port}/api/v1/ticker/binance/BTCUSDT") as answer:
                            return answer.status == 200 and (await answer.json()).get("last_trade") is not None
                    except aiohttp.ClientError:
                        return False

                await until("the API's ticker holds a BTCUSDT trade", ticker)
                # The gateway listens once it has read back its state from the streams, maybe after the API is up.
                await until("the push gateway listening", lambda: listening(push_port))
                async with http.ws_connect(f"ws://127.0.0.1:{push_port}/") as socket:
                    subscribe = {"action": "subscribe", "channels": ["kline.1m"], "symbols": ["binance.BTCUSDT"]}
                    await socket.send_json(subscribe)

                    async def kline_update() -> dict:  # type: ignore[type-arg]
                        while True:
                            message = msgspec.json.decode(await socket.receive_str())
                            if message.get("type") == "update":
                                return message

                    update = await asyncio.wait_for(kline_update(), 60)
                    assert update["channel"] == "kline.1m" and update["data"]["symbol"] == "BTCUSDT"
            up.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(up.wait(), 90) == 0, said.decode(errors="replace")[-3000:]
        finally:
            if up.returncode is None:
                up.kill()
                await up.wait()
            await draining
