"""``db``: the PostgreSQL/TimescaleDB schema, backfills from JSON lines, and kline checks against the trades."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO

import asyncpg
import click

from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config
from market_ingestor.errors import ConfigError
from market_ingestor.sinks.buckets import BucketReport, check_buckets
from market_ingestor.sinks.connect import connect, storage_errors
from market_ingestor.sinks.load import BadLine, Expiry, LoadSummary, load_lines
from market_ingestor.sinks.rebuild import Report, check_klines
from market_ingestor.sinks.schema import (
    SchemaMode,
    maintain,
    migrate,
    migrate_schema,
    read_mode,
    retention_windows,
    schema_status,
)
from market_ingestor.sinks.writer import RowWriter
from market_ingestor.windows import Interval, format_ns, parse_interval


@click.group()
def db() -> None:
    """The database: schema migrations, loads (backfills) and kline checks. Uses [database] url and [storage]."""


@db.command("migrate")
@pass_cli
def migrate_command(cli_ctx: CliContext) -> None:
    """Apply pending migrations (idempotent) and create partitions ahead; print the mode.

    TimescaleDB: also brings the chunk interval, compression settings and the compression and retention
    policies in line with [storage], changing only what differs (printed). This is the only command that
    changes existing policies: services and `db load` leave them alone and log where their settings differ.
    """
    config = cli_ctx.config
    report = run(migrate_schema(config.database.url, config.storage, apply_settings=True))
    for name in report.applied:
        click.echo(f"applied  {name}")
    for change in report.changed:
        click.echo(f"changed  {change}")
    click.echo(f"schema up to date ({report.mode.value})")


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
                windows = await retention_windows(conn, cli_ctx.config.storage)
            finally:
                await conn.close()
        return {
            "mode": info.mode.value if info.mode else None,
            "timescaledb": info.extension,
            "applied": info.applied,
            "pending": info.pending,
            "partitions": info.partitions,
            "hypertables": info.hypertables,
            "retention": (
                {table: str(window) for table, window in windows.items()} if info.mode is SchemaMode.PARTITIONED else {}
            ),
        }

    report = run(go())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"mode: {report['mode'] or 'not migrated (run `market-ingestor db migrate`)'}")
    if report["timescaledb"]:
        click.echo(f"timescaledb extension {report['timescaledb']}")
    for row in report["applied"]:  # type: ignore[attr-defined]
        changed = "  (file changed since)" if row["changed_since"] else ""
        click.echo(f"applied  {row['version']:04d}_{row['name']}  {row['applied_at']}{changed}")
    for name in report["pending"]:  # type: ignore[attr-defined]
        click.echo(f"pending  {name}")
    hypertables: dict[str, dict[str, Any]] = report["hypertables"]  # type: ignore[assignment]
    retention: dict[str, str] = report["retention"]  # type: ignore[assignment]
    for table, parts in report["partitions"].items():  # type: ignore[attr-defined]
        span = f"{parts[0]} .. {parts[-1]}" if parts else "none"
        info = hypertables.get(table)
        if info is None:
            keep = retention.get(table, "all (retention off)")
            click.echo(f"{table}: {len(parts)} partition(s) {span}; keeps {keep} ([storage] retention, `db maintain`)")
            continue
        click.echo(
            f"{table}: hypertable, chunks of {info['chunk_interval']}: {len(parts)} chunk(s) {span}, "
            f"{info['compressed_chunks']} compressed; segmentby {info['compress_segmentby']}, "
            f"orderby {info['compress_orderby']}; compression after {info['compression_after']}, "
            f"retention {info['retention']}"
        )
        for job in info["jobs"]:
            click.echo(
                f"  job {job['job_id']} {job['proc']} every {job['schedule']} {job['config']}: "
                f"last run {job['last_run'] or 'never'}, next {job['next_start']}"
            )


@db.command("maintain")
@pass_cli
def maintain_command(cli_ctx: CliContext) -> None:
    """Plain PostgreSQL: create partitions ahead, drop those past [storage] retention (the sink does this daily
    too). TimescaleDB: run the database's compression and retention policies now (what their jobs do on their
    schedule). Prints what was created, compressed or dropped."""
    config = cli_ctx.config

    async def go() -> list[str]:
        with storage_errors("maintaining the tables"):
            conn = await connect(config.database.url)
            try:
                return (await maintain(conn, config.storage, run_policies=True)).lines()
            finally:
                await conn.close()

    for line in run(go()):
        click.echo(line)


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

    warned: set[str] = set()

    def report_expired(table: str, count: int, cutoff_ns: int) -> None:
        if table not in warned:  # once per table; the summary has the totals
            warned.add(table)
            click.echo(
                f"warning: {count} row(s) for {table} in the next batch are older than its retention cutoff "
                f"{format_ns(cutoff_ns)}: they are stored, and the next retention run deletes them",
                err=True,
            )

    async def go() -> LoadSummary | BadLine:
        if config.storage.migrate_on_start:
            await migrate(config.database.url, config.storage)
        writer = RowWriter(config.database.url, config.storage)
        await writer.start()
        try:
            with storage_errors("reading the retention windows"):
                conn = await connect(config.database.url)
                try:
                    expiry = Expiry.at(time.time_ns(), await retention_windows(conn, config.storage))
                finally:
                    await conn.close()
            return await load_lines(
                file,
                writer,
                batch_size=batch_size,
                skip_bad=skip_bad,
                on_bad=report_bad,
                expiry=expiry,
                on_expired=report_expired,
            )
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
    if summary.expired:
        tables = ", ".join(f"{table} {n}" for table, n in sorted(summary.expired.items()))
        click.echo(f"older than the retention window (deleted by the next retention run): {tables}", err=True)


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


@db.command("check-buckets")
@click.option("--exchange", "-e", required=True)
@click.option("--symbol", "-s", required=True, help="As stored (normalized, e.g. BTCUSDT).")
@click.option("--from", "from_ns", required=True, type=_Moment(), help="Start (UTC unless a zone is given).")
@click.option("--to", "to_ns", required=True, type=_Moment(), help="End, exclusive.")
@pass_cli
def check_buckets_command(cli_ctx: CliContext, exchange: str, symbol: str, from_ns: int, to_ns: int) -> None:
    """TimescaleDB: compare the stored 1m klines with time_bucket('1 minute') aggregates of the stored trades.

    A second, independent check beside rebuild-klines (windows, first/last from TimescaleDB, not from our
    SQL). Differences are printed as JSON lines; exit status 1 if there are any.
    """
    if to_ns <= from_ns:
        raise click.BadParameter("must be after --from", param_hint="--to")
    config = cli_ctx.config
    grace_ns = config.streams.grace_ms * 1_000_000

    async def go() -> BucketReport:
        with storage_errors("checking klines against time buckets"):
            conn = await connect(config.database.url)
            try:
                mode = await read_mode(conn)
                if mode is not SchemaMode.TIMESCALE:
                    this = mode.value if mode else "not migrated"
                    raise click.ClickException(
                        f"check-buckets needs TimescaleDB mode (this database: {this}); use `db rebuild-klines`"
                    )
                minute = 60 * 10**9
                until_ns = (time.time_ns() - grace_ns) // minute * minute - minute
                return await check_buckets(conn, exchange, symbol, from_ns, to_ns, until_ns)
            finally:
                await conn.close()

    report = run(go())
    for diff in report.differences:
        click.echo(
            json.dumps(
                {"minute": diff.minute, "kind": diff.kind, "fields": {k: list(v) for k, v in diff.fields.items()}}
            )
        )
    click.echo(
        f"{exchange} {symbol} 1m: {report.compared} minute(s) compared, {len(report.differences)} difference(s)",
        err=True,
    )
    if report.differences:
        sys.exit(1)
