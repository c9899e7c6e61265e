"""``db``: the PostgreSQL/TimescaleDB schema, backfills from JSON lines, and kline checks against the trades."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import BinaryIO

import asyncpg
import click

from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config
from market_ingestor.errors import ConfigError
from market_ingestor.sinks.connect import connect, storage_errors
from market_ingestor.sinks.load import BadLine, LoadSummary, load_lines
from market_ingestor.sinks.rebuild import Report, check_klines
from market_ingestor.sinks.schema import maintain, migrate, schema_status
from market_ingestor.sinks.writer import RowWriter
from market_ingestor.streams.windows import Interval, format_ns, parse_interval


@click.group()
def db() -> None:
    """The database: schema migrations, loads (backfills) and kline checks. Uses [database] url and [storage]."""


@db.command("migrate")
@pass_cli
def migrate_command(cli_ctx: CliContext) -> None:
    """Apply pending migrations (idempotent) and create partitions ahead; print the mode."""
    config = cli_ctx.config
    mode = run(migrate(config.database.url, config.storage))
    click.echo(f"schema up to date ({mode.value})")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_cli
def status(cli_ctx: CliContext, as_json: bool) -> None:
    """The storage mode, applied and pending migrations, and each time table's partitions (or chunks)."""

    async def go() -> dict[str, object]:
        with storage_errors("reading the schema status"):
            conn = await connect(cli_ctx.config.database.url)
            try:
                info = await schema_status(conn)
            finally:
                await conn.close()
        return {
            "mode": info.mode.value if info.mode else None,
            "applied": info.applied,
            "pending": info.pending,
            "partitions": info.partitions,
        }

    report = run(go())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"mode: {report['mode'] or 'not migrated (run `market-ingestor db migrate`)'}")
    for row in report["applied"]:  # type: ignore[attr-defined]
        changed = "  (file changed since)" if row["changed_since"] else ""
        click.echo(f"applied  {row['version']:04d}_{row['name']}  {row['applied_at']}{changed}")
    for name in report["pending"]:  # type: ignore[attr-defined]
        click.echo(f"pending  {name}")
    for table, parts in report["partitions"].items():  # type: ignore[attr-defined]
        span = f"{parts[0]} .. {parts[-1]}" if parts else "none"
        click.echo(f"{table}: {len(parts)} partition(s) {span}")


@db.command("maintain")
@pass_cli
def maintain_command(cli_ctx: CliContext) -> None:
    """Plain PostgreSQL: create partitions ahead, drop those past retention (the sink does this daily too)."""
    config = cli_ctx.config

    async def go() -> None:
        with storage_errors("maintaining partitions"):
            conn = await connect(config.database.url)
            try:
                await maintain(conn, config.storage)
            finally:
                await conn.close()

    run(go())
    click.echo("partitions maintained")


@db.command()
@click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True, help="Rows per write.")
@click.option("--skip-bad", is_flag=True, help="Report bad lines and go on (exit status 1 at the end if any).")
@click.argument("file", type=click.File("rb"))
@pass_cli
def load(cli_ctx: CliContext, batch_size: int, skip_bad: bool, file: BinaryIO) -> None:
    """Load normalized JSON lines (as ``parse`` and ``klines`` print them; - for stdin) into the tables.

    Trades, klines, indicator values and quotes (when storage.store_quotes) are written in batches, each one
    transaction; loading the same file again changes nothing. Book and other events have no table and are
    counted. A bad line stops the load there, after everything before it was written (fix it and load again),
    unless --skip-bad.
    """
    config = cli_ctx.config

    def report_bad(bad: BadLine) -> None:
        click.echo(str(bad), err=True)

    async def go() -> LoadSummary | BadLine:
        if config.storage.migrate_on_start:
            await migrate(config.database.url, config.storage)
        writer = RowWriter(config.database.url, config.storage)
        await writer.start()
        try:
            return await load_lines(file, writer, batch_size=batch_size, skip_bad=skip_bad, on_bad=report_bad)
        except BadLine as bad:
            return bad
        finally:
            await writer.close()

    summary = run(go())
    if isinstance(summary, BadLine):
        bad = summary
        if bad.summary is not None:
            _print_summary(bad.summary)
        raise click.ClickException(
            f"{bad}. Every line before it was loaded, nothing after it. Fix or remove the line and load the file "
            "again (lines already stored are not stored twice), or use --skip-bad."
        )
    _print_summary(summary)
    if summary.bad:
        click.echo(f"{summary.bad} bad line(s) skipped", err=True)
        sys.exit(1)


def _print_summary(summary: LoadSummary) -> None:
    r = summary.result
    click.echo(
        f"{summary.lines} line(s), {summary.events} stored event(s): new trades {r.trades}, klines written "
        f"{r.klines}, indicator values written {r.indicators}, new quotes {r.quotes}, unchanged {r.unchanged}"
        + (f", quotes skipped (storage.store_quotes is off) {r.quotes_skipped}" if r.quotes_skipped else "")
    )
    if summary.not_stored:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.not_stored.items()))
        click.echo(f"not stored (no table): {kinds}")


class _Moment(click.ParamType):
    """An ISO 8601 date or time; UTC unless it names a zone."""

    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 date or time (e.g. 2024-02-29 or 2024-02-29T12:00:00Z)", param)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


class _IntervalType(click.ParamType):
    name = "INTERVAL"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Interval:
        if isinstance(value, Interval):
            return value
        try:
            return parse_interval(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param)


@db.command("rebuild-klines")
@click.option("--exchange", "-e", required=True)
@click.option("--symbol", "-s", required=True, help="As stored (normalized, e.g. BTCUSDT).")
@click.option("--interval", "-i", "intervals", required=True, multiple=True, type=_IntervalType(), help="Repeatable.")
@click.option("--from", "from_ns", required=True, type=_Moment(), help="Start (UTC unless a zone is given).")
@click.option("--to", "to_ns", required=True, type=_Moment(), help="End, exclusive.")
@click.option("--repair", is_flag=True, help="Write the rebuilt klines where they differ (revision + 1).")
@pass_cli
def rebuild_klines(
    cli_ctx: CliContext,
    exchange: str,
    symbol: str,
    intervals: tuple[Interval, ...],
    from_ns: int,
    to_ns: int,
    repair: bool,
) -> None:
    """Recompute klines from the stored trades (in SQL) and report where the stored klines differ.

    Differences are printed as JSON lines (open_time, kind, and each differing field as [stored, rebuilt]);
    the exit status is 1 if there are any and --repair was not given. Windows still open (end + grace after
    now) are skipped. --repair writes the rebuilt klines of "missing" and "different" windows, closed, with
    the stored revision + 1; "extra" ones (a stored kline counting trades the table lacks) are only reported.
    """
    if to_ns <= from_ns:
        raise click.BadParameter("must be after --from", param_hint="--to")
    config = cli_ctx.config
    reports = run(_rebuild(config, exchange, symbol, intervals, from_ns, to_ns, repair))
    differences = 0
    for interval, report in zip(intervals, reports, strict=True):
        for diff in report.differences:
            line = {"interval": interval.name, "open_time": format_ns(diff.open_time), "kind": diff.kind}
            click.echo(json.dumps(line | {"fields": {k: list(v) for k, v in diff.fields.items()}}))
        differences += len(report.differences)
        repaired = f", {len(report.repairs())} repaired" if repair else ""
        click.echo(
            f"{exchange} {symbol} {interval.name}: {report.compared} window(s) compared, "
            f"{len(report.differences)} difference(s){repaired}, {report.not_over} still open",
            err=True,
        )
    if differences and not repair:
        sys.exit(1)


async def _rebuild(
    config: Config,
    exchange: str,
    symbol: str,
    intervals: tuple[Interval, ...],
    from_ns: int,
    to_ns: int,
    repair: bool,
) -> list[Report]:
    grace_ns = config.streams.grace_ms * 1_000_000
    reports = []
    with storage_errors("rebuilding klines"):
        conn: asyncpg.Connection = await connect(config.database.url)
        try:
            for interval in intervals:
                now_ns = time.time_ns()
                reports.append(
                    await check_klines(
                        conn, exchange, symbol, interval, from_ns, to_ns, now_ns=now_ns, grace_ns=grace_ns
                    )
                )
        finally:
            await conn.close()
    if repair:
        fixes = [kline for report in reports for kline in report.repairs()]
        if fixes:
            writer = RowWriter(config.database.url, config.storage)
            await writer.start()
            try:
                await writer.write(fixes)
            finally:
                await writer.close()
    return reports
