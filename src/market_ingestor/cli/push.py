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
    from market_ingestor.push import Gateway


async def _serve(config: Config) -> None:
    from market_ingestor.push import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(config)
    async with _metrics(config, gateway, stop), gateway:
        prefix = config.bus.topic_prefix
        click.echo(
            f"push gateway listening on ws://{config.push.host}:{gateway.port}/ "
            f"(bus: {config.bus.kind}, topics {prefix}market.trades/quotes/klines/indicators); see docs/push.md",
        )
        stopped, failed = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gateway.failed.wait())
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopped, failed):
            waiter.cancel()
    if gateway.failure is not None:
        raise MarketIngestorError(f"push gateway stopped: {gateway.failure!r}") from gateway.failure


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
    if config.push.auth_enabled:
        # The API-key store (issue 5) is wired into the gateway by the api work; until then refuse to start
        # rather than run open while the operator asked for keys.
        raise click.ClickException("push.auth_enabled: API-key checking is not wired into this build yet")
    run(_serve(config))
