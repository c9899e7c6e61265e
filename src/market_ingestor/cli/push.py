"""``push``: the WebSocket push gateway, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import click
import msgspec

from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config
from market_ingestor.errors import MarketIngestorError

if TYPE_CHECKING:
    from market_ingestor.push import Verifier


@asynccontextmanager
async def _key_verifier(config: Config) -> AsyncIterator[Verifier | None]:
    """The API keys of ``market-ingestor apikeys`` (cached per ``api.key_cache_ttl_s``), when push.auth_enabled."""
    if not config.push.auth_enabled:
        yield None
        return
    import asyncpg

    from market_ingestor.api.keys import KeyVerifier

    # min_size=0: no connection at start; a database that is down refuses new clients with 503, not the gateway.
    pool = await asyncpg.create_pool(config.database.url, min_size=0, max_size=2)
    try:
        verifier = KeyVerifier(pool, config.api.key_cache_ttl_s, config.api.key_cache_size)

        async def verify(key: str) -> bool:
            return await verifier.verify(key) is not None

        yield verify
    finally:
        await pool.close()


async def _serve(config: Config) -> None:
    from market_ingestor.push import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with _key_verifier(config) as verify, Gateway(config, verify) as gateway:
        prefix = config.bus.topic_prefix
        click.echo(
            f"push gateway listening on ws://{config.push.host}:{gateway.port}/ "
            f"(bus: {config.bus.kind}, topics {prefix}market.trades/quotes/klines/indicators, "
            f"API keys {'required' if verify else 'not required'}); see docs/push.md",
        )
        stopped, failed = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gateway.failed.wait())
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, failed):
            waiter.cancel()
    if gateway.failure is not None:
        raise MarketIngestorError(f"push gateway stopped: {gateway.failure!r}") from gateway.failure


@click.command()
@click.option("--host", default=None, help="Interface to listen on [default: push.host].")
@click.option("--port", type=int, default=None, help="Port to listen on, 0 for any free one [default: push.port].")
@pass_cli
def push(cli_ctx: CliContext, host: str | None, port: int | None) -> None:
    """Run the WebSocket push gateway until SIGINT/SIGTERM (protocol: docs/push.md)."""
    config = cli_ctx.config
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    if overrides:
        config = msgspec.structs.replace(config, push=msgspec.structs.replace(config.push, **overrides))
    run(_serve(config))
