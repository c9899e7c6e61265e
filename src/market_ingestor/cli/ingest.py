"""``parse`` (a recorded session -> normalized JSON lines) and ``ingest`` (the live service)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click
import msgspec

from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.errors import MarketIngestorError, NotNormalized, ParseError
from market_ingestor.ingestor.capture import read_session
from market_ingestor.ingestor.exchanges import REGISTRY, ParseContext, get_spec
from market_ingestor.ingestor.service import run_until_signalled
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.model import encode


def _registry(exchange: str, instruments: Path | None) -> InstrumentRegistry:
    """From a recorded REST listing (the ``.0`` files) or a plain JSON body; empty when none is given."""
    if instruments is None:
        return InstrumentRegistry()
    spec = get_spec(exchange)
    registry = InstrumentRegistry()
    records = [r for r in read_session(instruments) if r.kind == "rest"] or list(read_session(instruments))
    for record in records:
        try:
            for instrument in spec.parse_instruments(record.payload.encode()):
                registry.add(instrument)
        except (ParseError, msgspec.MsgspecError, KeyError, TypeError, ValueError):
            continue  # a REST body of another endpoint in the same recording
    return registry


@click.command()
@click.option("--exchange", "-e", required=True, type=click.Choice(sorted(REGISTRY)), help="Whose frames these are.")
@click.option(
    "--instruments",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The exchange's recorded REST instrument listing (e.g. BINANCE.0), for exact base/quote splits.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit with status 1 if anything was reported on stderr: a line that could not be read, a frame that could"
    " not be parsed, or a frame not turned into events.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def parse(exchange: str, instruments: Path | None, strict: bool, file: str) -> None:
    """Normalize a recorded session (or JSON lines of raw frames) to JSON lines on stdout.

    Trades, quotes and book snapshots/deltas come out one per line, decimals as strings exactly as the exchange
    sent them. Every line is read whatever comes before it. On stderr: each line that cannot be read (not UTF-8)
    or whose frame cannot be parsed, with its line number and reason; then a summary per channel of the frames
    not turned into events (a channel or API version the parser does not handle, or a frame too incomplete for
    an event). Protocol chatter (heartbeats, subscription acks, pongs, status events) is not reported.

    Exit status: 0 when the whole file was read, even if something was reported; with --strict, 1 when anything
    was reported; 2 for a usage error.
    """
    spec = get_spec(exchange)
    registry = _registry(exchange, instruments)
    out = sys.stdout.buffer
    unreadable = failures = 0
    not_normalized: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], tuple[int, str]] = {}  # (channel, reason) -> the first line and its detail
    source = sys.stdin.buffer if file == "-" else file
    for record in read_session(source):
        if record.kind == "unreadable":
            unreadable += 1
            click.echo(f"line {record.line_no}: {record.payload}; skipped", err=True)
            continue
        if record.kind != "received":
            continue
        try:
            events = spec.parse(record.payload, ParseContext(registry, record.recv_ts_ns))
        except NotNormalized as exc:
            key = (exc.channel, exc.reason)
            not_normalized[key] += 1
            first.setdefault(key, (record.line_no, exc.detail))
            continue
        except ParseError as exc:
            failures += 1
            click.echo(f"line {record.line_no}: {exc}", err=True)
            continue
        for event in events:
            out.write(encode(event) + b"\n")
    out.flush()
    _summary(exchange, unreadable, failures, not_normalized, first)
    if strict and (unreadable or failures or not_normalized):
        sys.exit(1)


def _summary(
    exchange: str,
    unreadable: int,
    failures: int,
    not_normalized: Counter[tuple[str, str]],
    first: dict[tuple[str, str], tuple[int, str]],
) -> None:
    if not_normalized:
        click.echo(f"{sum(not_normalized.values())} frame(s) not turned into events:", err=True)
        for (channel, reason), count in sorted(not_normalized.items()):
            line_no, detail = first[channel, reason]
            click.echo(f"  {exchange} {channel}: {count} {reason} ({detail}), first at line {line_no}", err=True)
    if unreadable:
        click.echo(f"{unreadable} line(s) could not be read", err=True)
    if failures:
        click.echo(f"{failures} frame(s) could not be parsed", err=True)


@click.command()
@click.option("--capture", type=click.Path(dir_okay=False), help="Append every raw frame to this file (replayable).")
@pass_cli
def ingest(cli_ctx: CliContext, capture: str | None) -> None:
    """Run the configured exchange connectors and publish normalized events to the bus until SIGINT/SIGTERM."""
    config = cli_ctx.config
    if capture:
        config = msgspec.structs.replace(config, ingest=msgspec.structs.replace(config.ingest, capture_path=capture))
    if not any(ex.enabled for ex in config.exchanges.values()):
        raise click.ClickException("no exchange is configured: add [exchanges.NAME] sections to the config")
    try:
        run(run_until_signalled(config))
    except MarketIngestorError as exc:
        raise click.ClickException(str(exc)) from exc
