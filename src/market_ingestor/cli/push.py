"""``push``: the WebSocket push gateway, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import click
import msgspec
from prometheus_client import REGISTRY

from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config
from market_ingestor.errors import MarketIngestorError
from market_ingestor.observability import Health, MetricsServer

if TYPE_CHECKING:
    from market_ingestor.push import Gateway, Verifier


async def _serve(config: Config) -> None:
    from market_ingestor.push import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with _key_verifier(config) as verify:
        gateway = Gateway(config, verify)
        async with _metrics(config, gateway, stop), gateway:
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


@contextlib.asynccontextmanager
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


@contextlib.asynccontextmanager
async def _metrics(config: Config, gateway: Gateway, stop: asyncio.Event) -> AsyncIterator[None]:
    """``/metrics`` and ``/healthz`` on ``push.metrics_port``, apart from the public WebSocket port: Prometheus
    scrapes each gateway process on its own port, also when several share the WebSocket port (reuse_port)."""

    def health() -> Health:
        state = "failed" if gateway.failed.is_set() else "stopping" if stop.is_set() else "running"
        return Health(state == "running", {"state": state, "clients": gateway.metrics.clients})

    from market_ingestor.push.metrics import PushCollector

    collector = PushCollector(gateway.metrics)
    REGISTRY.register(collector)
    try:
        async with MetricsServer(config.metrics.host, config.push.metrics_port, health, "push.metrics_port"):
            yield
    finally:
        REGISTRY.unregister(collector)


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
