"""The ``market-ingestor`` command: one click group, one module per command group."""

from __future__ import annotations

from pathlib import Path

import click

from market_ingestor import __version__
from market_ingestor.cli.api import api, apikeys
from market_ingestor.cli.context import CliContext
from market_ingestor.cli.control import exchanges, symbols
from market_ingestor.cli.db import db
from market_ingestor.cli.dev import dev
from market_ingestor.cli.ingest import ingest, parse
from market_ingestor.cli.klines import klines
from market_ingestor.cli.mirror import mirror_command
from market_ingestor.cli.push import push
from market_ingestor.cli.simulate import simulate
from market_ingestor.cli.sink import sink
from market_ingestor.cli.up import tail, up
from market_ingestor.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="market-ingestor")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config file [default: $MARKET_INGESTOR_CONFIG, else ./market-ingestor.toml if present].",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Exchange market data -> Kafka/NATS -> Faust streams -> TimescaleDB, with live WebSocket push."""
    ctx.obj = CliContext(config_path)


def _not_yet(name: str, summary: str, issue: int) -> click.Command:
    @click.command(name, help=f"{summary} (not yet available).", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'{name}' is not yet available in this version (planned, issue {issue}).")

    return command


cli.add_command(dev)
cli.add_command(exchanges)
cli.add_command(symbols)
cli.add_command(parse)
cli.add_command(ingest)
cli.add_command(simulate)
cli.add_command(up)
cli.add_command(tail)
cli.add_command(worker)
cli.add_command(klines)
cli.add_command(db)
cli.add_command(sink)
cli.add_command(api)
cli.add_command(apikeys)
cli.add_command(push)
cli.add_command(mirror_command)


if __name__ == "__main__":
    cli()
