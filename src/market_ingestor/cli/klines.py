"""``klines``: normalized trades (JSON lines, the output of ``parse``) -> klines (JSON lines), offline."""

from __future__ import annotations

import sys
from typing import BinaryIO

import click
import msgspec

from market_ingestor.errors import ConfigError
from market_ingestor.model import Kline, Trade, decode, encode
from market_ingestor.streams.klines import (
    DEFAULT_INTERVALS,
    InstrumentKlines,
    KlineSettings,
    exact_context,
)
from market_ingestor.validity import trade_problem

_DEFAULTS = KlineSettings()


@click.command()
@click.option(
    "--interval",
    "-i",
    "intervals",
    multiple=True,
    metavar="INTERVAL",
    help=f"A kline interval: 30s, 1m, 4h, 1d, 1w...; repeat for several [default: {' '.join(DEFAULT_INTERVALS)}].",
)
@click.option(
    "--grace-ms",
    type=click.IntRange(min=0),
    default=_DEFAULTS.grace_ms,
    show_default=True,
    help="A window closes once a trade this much later than its end has been seen.",
)
@click.option(
    "--max-lateness-ms",
    type=click.IntRange(min=0),
    default=_DEFAULTS.max_lateness_ms,
    show_default=True,
    help="A later trade still corrects a closed kline (revision + 1) within this long after the window's end.",
)
@click.option("--final", is_flag=True, help="Print only the last revision of each kline.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any line could not be used.")
@click.argument("file", type=click.File("rb"))
def klines(
    intervals: tuple[str, ...], grace_ms: int, max_lateness_ms: int, final: bool, strict: bool, file: BinaryIO
) -> None:
    """Aggregate normalized trades (JSON lines, e.g. from ``parse``; - for stdin) into klines on stdout.

    Trades are grouped by exchange and symbol. Closed klines, flat ones for windows without trades and the
    corrections late trades cause (revision + 1) are printed as JSON lines, ordered by open_time, exchange,
    symbol and interval; windows still open at the end of the input are closed. Lines that are not trades are
    skipped; malformed lines and trades too late to place are reported on stderr with their line number.
    """
    try:
        settings = KlineSettings(
            intervals=intervals or DEFAULT_INTERVALS, grace_ms=grace_ms, max_lateness_ms=max_lateness_ms
        )
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--interval") from exc
    emitted, failures = _aggregate_lines(file, settings)
    length = {interval.name: interval.ns for interval in settings.parsed_intervals()}
    if final:  # revisions come out in order: the last one seen per window is the highest
        emitted = list({(k.exchange, k.symbol, k.interval, k.open_time): k for k in emitted}.values())
    emitted.sort(key=lambda k: (k.open_time, k.exchange, k.symbol, length[k.interval], k.revision))
    out = sys.stdout.buffer
    for kline in emitted:
        out.write(encode(kline) + b"\n")
    out.flush()
    if failures:
        click.echo(f"{failures} line(s) could not be used", err=True)
        if strict:
            sys.exit(1)


def _aggregate_lines(lines: BinaryIO, settings: KlineSettings) -> tuple[list[Kline], int]:
    """Every kline the trades in ``lines`` produce, and the number of lines that could not be used."""
    states: dict[tuple[str, str], InstrumentKlines] = {}
    emitted: list[Kline] = []
    failures = 0
    with exact_context():  # once for the whole input instead of once per trade
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = decode(line)
            except msgspec.MsgspecError as exc:
                failures += 1
                click.echo(f"line {line_no}: {exc}", err=True)
                continue
            if not isinstance(event, Trade):
                continue
            problem = trade_problem(event)
            if problem is None:
                key = (event.exchange, event.symbol)
                state = states.get(key)
                if state is None:
                    state = states[key] = InstrumentKlines.new(event.exchange, event.symbol, settings)
                applied = state.apply(event)
                if not applied.too_late:
                    emitted += applied.klines
                    continue
                problem = applied.reason
            failures += 1
            click.echo(f"line {line_no}: {problem}", err=True)
        for state in states.values():
            emitted += state.flush()
    return emitted, failures
