"""``market-ingestor dev``: run the local Kafka, PostgreSQL and NATS the tests and the demo use, and on request a
Prometheus scraping the services that run on the configuration (``--config``) at their metrics ports."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from market_ingestor.cli.context import CliContext
from market_ingestor.devstack import DevStackError, StackInfo, ensure_stack, stack_status, stop_stack
from market_ingestor.devstack.scrape import pipeline_jobs

F = TypeVar("F", bound=Callable[..., Any])


def _stack_options(command: F) -> F:
    command = click.option(
        "--dir",
        "state_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="State directory [default: $MARKET_INGESTOR_DEVSTACK_DIR or ./.devstack].",
    )(command)
    return click.option(
        "--port-offset",
        type=int,
        default=None,
        help="Shift every port [default: $MARKET_INGESTOR_DEVSTACK_PORT_OFFSET or 0].",
    )(command)


@click.group()
def dev() -> None:
    """Local development servers: Kafka, PostgreSQL (plain and with TimescaleDB), NATS JetStream, Prometheus."""


@dev.command()
@_stack_options
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per server to get ready.")
@click.option(
    "--with",
    "with_",
    type=click.Choice(["prometheus"]),
    multiple=True,
    help="Also run Prometheus, scraping ingest, worker, sink, push and api at the config's metrics ports.",
)
@click.pass_context
def up(
    ctx: click.Context, state_dir: Path | None, port_offset: int | None, timeout: float, with_: tuple[str, ...]
) -> None:
    """Start whatever is not running yet and print how to connect."""
    began = time.monotonic()
    scrape_jobs = None
    if "prometheus" in with_:
        # The services' ports come from the same config `market-ingestor --config ... up` runs them on.
        cli_ctx = ctx.find_object(CliContext) or CliContext(None)
        scrape_jobs = pipeline_jobs(cli_ctx.config)
    try:
        info = ensure_stack(state_dir, port_offset=port_offset, timeout=timeout, scrape_jobs=scrape_jobs)
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_endpoints(info, time.monotonic() - began)


@dev.command()
@_stack_options
@click.option("--purge", is_flag=True, help="Also delete the state directory (data and logs).")
def down(state_dir: Path | None, port_offset: int | None, purge: bool) -> None:
    """Stop every server the dev stack started."""
    try:
        stopped = stop_stack(state_dir, port_offset=port_offset, purge=purge)
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@dev.command()
@_stack_options
def status(state_dir: Path | None, port_offset: int | None) -> None:
    """Print each server's endpoint and state as JSON."""
    try:
        report = stack_status(state_dir, port_offset=port_offset)
    except DevStackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report, indent=2))


def _print_endpoints(info: StackInfo, seconds: float) -> None:
    started = ", ".join(info.started) if info.started else "nothing (all reused)"
    click.echo(f"dev stack ready in {seconds:.1f}s; started: {started}")
    transactions = "" if info.supports_transactions else ", no transactions"
    click.echo(f"  kafka     {info.kafka_bootstrap}  ({info.kafka_kind}{transactions})")
    click.echo(f"  postgres  {info.database_url}  (plain PostgreSQL)")
    if info.timescaledb_url:
        click.echo(f"  timescaledb  {info.timescaledb_url}  (PostgreSQL with TimescaleDB preloaded)")
    else:
        click.echo(f"  timescaledb  not available: {info.timescaledb_missing}")
    click.echo(f"  nats      {info.nats_url}")
    if info.prometheus_url:
        click.echo(f"  prometheus  {info.prometheus_url}  (scraping ingest, worker, sink, push, api)")
    click.echo("environment:")
    for name, value in info.env().items():
        click.echo(f"  export {name}={value}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dev()
