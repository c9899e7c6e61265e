"""``push``: the WebSocket push gateway, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import click
import msgspec

from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config
from market_ingestor.errors import MarketIngestorError


async def _serve(config: Config) -> None:
    from market_ingestor.push import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Gateway(config) as gateway:
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
