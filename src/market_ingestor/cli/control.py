"""``exchanges`` and ``symbols``: change what running ingestors subscribe to, through the control topic."""

from __future__ import annotations

import json

import click

from market_ingestor.bus.topics import Topics
from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.errors import MarketIngestorError
from market_ingestor.ingestor.control import command, read_state, send_command


def _send(cli_ctx: CliContext, action: str, target: str, exchange: str, symbol: str | None = None) -> None:
    try:
        cmd = command(action, target, exchange, symbol)
    except MarketIngestorError as exc:
        raise click.BadParameter(str(exc)) from exc
    run(send_command(cli_ctx.config, cmd))
    what = f"{exchange} {symbol}" if symbol else exchange
    click.echo(f"{action} {target} {what}: sent to {Topics.CONTROL}; running ingestors apply it live")


@click.group()
def exchanges() -> None:
    """Enable, disable and list exchanges."""


@exchanges.command("add")
@click.argument("exchange")
@pass_cli
def exchanges_add(cli_ctx: CliContext, exchange: str) -> None:
    """Enable EXCHANGE (binance, okx, bybit, coinbase, kraken)."""
    _send(cli_ctx, "add", "exchange", exchange)


@exchanges.command("remove")
@click.argument("exchange")
@pass_cli
def exchanges_remove(cli_ctx: CliContext, exchange: str) -> None:
    """Disable EXCHANGE; its symbols are kept for when it is enabled again."""
    _send(cli_ctx, "remove", "exchange", exchange)


@exchanges.command("list")
@pass_cli
def exchanges_list(cli_ctx: CliContext) -> None:
    """Print the enabled exchanges and their symbols as JSON."""
    state = run(read_state(cli_ctx.config))
    click.echo(json.dumps({name: sorted(syms) for name, syms in state.subscriptions().items()}, indent=2))


@click.group()
def symbols() -> None:
    """Add, remove and list the symbols of an exchange."""


@symbols.command("add")
@click.argument("exchange")
@click.argument("symbol")
@pass_cli
def symbols_add(cli_ctx: CliContext, exchange: str, symbol: str) -> None:
    """Subscribe EXCHANGE's SYMBOL (normalized, e.g. BTCUSDT)."""
    _send(cli_ctx, "add", "symbol", exchange, symbol)


@symbols.command("remove")
@click.argument("exchange")
@click.argument("symbol")
@pass_cli
def symbols_remove(cli_ctx: CliContext, exchange: str, symbol: str) -> None:
    """Unsubscribe EXCHANGE's SYMBOL."""
    _send(cli_ctx, "remove", "symbol", exchange, symbol)


@symbols.command("list")
@click.argument("exchange", required=False)
@pass_cli
def symbols_list(cli_ctx: CliContext, exchange: str | None) -> None:
    """Print the symbols of EXCHANGE (all exchanges when omitted), one per line."""
    state = run(read_state(cli_ctx.config))
    for name, syms in sorted(state.symbols.items()):
        if exchange in (None, name):
            for symbol in sorted(syms):
                click.echo(f"{name} {symbol}")
