"""TimescaleDB mode: hypertables, their compression settings and policies, and running those policies by hand.

What the ``[storage]`` settings ask for is a :class:`TablePolicy` per time table; :func:`read_policy` reads what
the database has (chunk interval, compression settings, the compression and retention jobs). :func:`reconcile`
changes only what differs: a job whose ``compress_after`` / ``drop_after`` changed is altered in place
(``alter_job``, same job id), a missing one added, an unwanted one removed. Nothing is removed and re-added on
every migrate, so job ids stay put and a running job is never deleted under itself.

Who may change policies: ``db migrate`` (an operator's explicit act). The migrations that services and
``db load`` run at start create the policies of tables they create, but leave existing ones alone and only log
where their settings differ (:func:`differences`): a one-off backfill run with another config must not rewrite
(or delete) the retention of the whole database.

Compression settings follow the server's advice: every column of a table's unique key is in ``segmentby`` or
``orderby`` (TimescaleDB warns otherwise), so an upsert into a compressed chunk finds its candidate batches by
their per-batch min/max metadata instead of decompressing whole segments.

:func:`run_policies` does now what the policies' background jobs do on schedule (compress chunks past
``compress_after``, drop chunks past ``drop_after``): ``db maintain`` uses it, and tests use it rather than wait
for the job scheduler (on PostgreSQL 15.20 the jobs do their work but end as Failed, see the vendor README).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from market_ingestor.config import StorageConfig
from market_ingestor.sinks.partitions import LONG_LIVED

logger = logging.getLogger(__name__)

#: The TimescaleDB release and PostgreSQL major the suite runs against (the dev stack builds this release; the
#: compose file's image is this pair). Other versions work as far as their SQL API agrees; migrate warns.
TESTED_VERSION = "2.28.3"
TESTED_POSTGRES = "15"

# (segmentby, orderby) per table: the key columns before the time column segment, the time column (newest
# first, as the API reads) and the key columns after it order. Tables not listed segment by exchange, symbol.
COMPRESSION: dict[str, tuple[str, str]] = {
    "market_trades": ("exchange, symbol", "ts DESC, trade_id"),
    "market_quotes": ("exchange, symbol", "ts DESC, ts_ns, recv_ts_ns"),
    "market_klines": ("exchange, symbol, interval", "open_time DESC"),
    "indicator_values": ("exchange, symbol, interval, name", "open_time DESC"),
}
_COMPRESS_JOB = "policy_compression"
_RETENTION_JOB = "policy_retention"


@dataclass(frozen=True)
class TablePolicy:
    """One hypertable's layout and policies; ``None`` after/for a policy means there is none."""

    table: str
    chunk_interval: timedelta
    segmentby: str
    orderby: str
    compress_after: timedelta | None
    drop_after: timedelta | None
    compress_job: int | None = None  # job ids (read from the database only)
    retention_job: int | None = None


def wanted_policy(table: str, column: str, settings: StorageConfig) -> TablePolicy:
    segmentby, orderby = COMPRESSION.get(table, ("exchange, symbol", f"{column} DESC"))
    keep_days = settings.kline_retention_days if table in LONG_LIVED else settings.retention_days
    return TablePolicy(
        table=table,
        chunk_interval=timedelta(days=settings.partition_interval_days),
        segmentby=segmentby,
        orderby=orderby,
        compress_after=timedelta(days=settings.compression_after_days) if settings.compression_after_days else None,
        drop_after=timedelta(days=keep_days) if keep_days else None,
    )


async def check_version(conn: asyncpg.Connection) -> None:
    """Warns when the database runs a TimescaleDB or PostgreSQL other than the tested pair."""
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    server = await conn.fetchval("SELECT current_setting('server_version_num')::int / 10000")
    if (version, str(server)) != (TESTED_VERSION, TESTED_POSTGRES):
        logger.warning(
            "untested TimescaleDB %s on PostgreSQL %s (tested: %s on PostgreSQL %s)",
            version,
            server,
            TESTED_VERSION,
            TESTED_POSTGRES,
        )


async def make_hypertable(conn: asyncpg.Connection, table: str, column: str, settings: StorageConfig) -> None:
    """Turns the new, empty ``table`` into a hypertable on ``column`` with the configured settings and policies."""
    await conn.execute(
        "SELECT create_hypertable($1::regclass, by_range($2::name, make_interval(days => $3)),"
        " if_not_exists => true, create_default_indexes => false)",
        table,
        column,
        settings.partition_interval_days,
    )
    await reconcile(conn, wanted_policy(table, column, settings))


async def read_policy(conn: asyncpg.Connection, table: str) -> TablePolicy:
    chunk_interval = await conn.fetchval(
        "SELECT time_interval FROM timescaledb_information.dimensions"
        " WHERE hypertable_name = $1 AND dimension_number = 1",
        table,
    )
    settings = await conn.fetchrow(
        "SELECT segmentby, orderby FROM timescaledb_information.hypertable_compression_settings"
        " WHERE hypertable = $1::regclass",
        table,
    )
    jobs = await conn.fetch(
        "SELECT job_id, proc_name, (config->>'compress_after')::interval AS compress_after,"
        " (config->>'drop_after')::interval AS drop_after"
        " FROM timescaledb_information.jobs WHERE hypertable_name = $1 AND proc_name = ANY($2::text[])"
        " ORDER BY job_id",
        table,
        [_COMPRESS_JOB, _RETENTION_JOB],
    )
    compress = next((job for job in jobs if job["proc_name"] == _COMPRESS_JOB), None)
    retention = next((job for job in jobs if job["proc_name"] == _RETENTION_JOB), None)
    return TablePolicy(
        table=table,
        chunk_interval=chunk_interval,
        segmentby=(settings["segmentby"] or "") if settings else "",
        orderby=(settings["orderby"] or "") if settings else "",
        compress_after=compress["compress_after"] if compress else None,
        drop_after=retention["drop_after"] if retention else None,
        compress_job=compress["job_id"] if compress else None,
        retention_job=retention["job_id"] if retention else None,
    )


def differences(wanted: TablePolicy, have: TablePolicy) -> list[str]:
    """What would change, one line each (``table: what: have -> wanted``); empty when they agree."""
    out = []
    for label, old, new in (
        ("chunk interval", have.chunk_interval, wanted.chunk_interval),
        ("compress_segmentby", _norm(have.segmentby), _norm(wanted.segmentby)),
        ("compress_orderby", _norm(have.orderby), _norm(wanted.orderby)),
        ("compression after", have.compress_after, wanted.compress_after),
        ("retention", have.drop_after, wanted.drop_after),
    ):
        if old != new:
            out.append(f"{wanted.table}: {label}: {_show(old)} -> {_show(new)}")
    return out


async def reconcile(conn: asyncpg.Connection, wanted: TablePolicy) -> list[str]:
    """Makes the database's settings of ``wanted.table`` equal ``wanted``, touching only what differs."""
    have = await read_policy(conn, wanted.table)
    changes = differences(wanted, have)
    if not changes:
        return []
    table = wanted.table
    if have.chunk_interval != wanted.chunk_interval:
        await conn.execute("SELECT set_chunk_time_interval($1::regclass, $2::interval)", table, wanted.chunk_interval)
    if (_norm(have.segmentby), _norm(have.orderby)) != (_norm(wanted.segmentby), _norm(wanted.orderby)):
        # Applies to chunks compressed from now on; chunks compressed before keep their layout.
        await conn.execute(
            f"ALTER TABLE \"{table}\" SET (timescaledb.compress, timescaledb.compress_segmentby = '{wanted.segmentby}',"
            f" timescaledb.compress_orderby = '{wanted.orderby}')"
        )
    await _job(conn, table, _COMPRESS_JOB, have.compress_job, have.compress_after, wanted.compress_after)
    await _job(conn, table, _RETENTION_JOB, have.retention_job, have.drop_after, wanted.drop_after)
    for change in changes:
        logger.info("timescaledb setting changed", extra={"change": change})
    return changes


async def _job(
    conn: asyncpg.Connection,
    table: str,
    proc: str,
    job_id: int | None,
    have: timedelta | None,
    want: timedelta | None,
) -> None:
    if have == want:
        return
    key, add, remove = (
        ("compress_after", "add_compression_policy", "remove_compression_policy")
        if proc == _COMPRESS_JOB
        else ("drop_after", "add_retention_policy", "remove_retention_policy")
    )
    if want is None:
        await conn.execute(f"SELECT {remove}($1::regclass, if_exists => true)", table)
    elif job_id is None:
        await conn.execute(f"SELECT {add}($1::regclass, $2::interval)", table, want)
    else:  # same job, new threshold: its id, schedule and history stay
        await conn.execute(
            "SELECT alter_job($1, config => jsonb_set(j.config, $2::text[], to_jsonb($3::interval::text)))"
            " FROM timescaledb_information.jobs j WHERE j.job_id = $1",
            job_id,
            [key],
            want,
        )


async def run_policies(conn: asyncpg.Connection, table: str) -> tuple[list[str], list[str]]:
    """Does now what ``table``'s policy jobs do: compresses the chunks past ``compress_after`` and drops those
    past ``drop_after``. Returns (compressed chunk names, dropped chunk names)."""
    policy = await read_policy(conn, table)
    compressed: list[str] = []
    dropped: list[str] = []
    if policy.drop_after is not None:
        drop = "SELECT drop_chunks($1::regclass, older_than => $2::interval)"
        rows = await conn.fetch(drop, table, policy.drop_after)
        dropped = [_short(row[0]) for row in rows]
    if policy.compress_after is not None:
        rows = await conn.fetch(
            "SELECT compress_chunk(c, if_not_compressed => true)"
            " FROM show_chunks($1::regclass, older_than => $2::interval) c"
            " WHERE NOT EXISTS (SELECT 1 FROM timescaledb_information.chunks i WHERE i.is_compressed"
            " AND format('%I.%I', i.chunk_schema, i.chunk_name)::regclass = c)",
            table,
            policy.compress_after,
        )
        compressed = [_short(row[0]) for row in rows]
    return compressed, dropped


async def retention_cutoffs(conn: asyncpg.Connection, tables: list[str]) -> dict[str, timedelta]:
    """The retention window of each table that has a retention job."""
    out = {}
    for table in tables:
        policy = await read_policy(conn, table)
        if policy.drop_after is not None:
            out[table] = policy.drop_after
    return out


async def describe(conn: asyncpg.Connection, table: str) -> dict[str, Any]:
    """``db status``: the hypertable's chunks, compression settings and policy jobs with their last run."""
    policy = await read_policy(conn, table)
    chunks = await conn.fetch(
        "SELECT chunk_name, is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = $1"
        " ORDER BY range_start",
        table,
    )
    jobs = await conn.fetch(
        "SELECT j.job_id, j.proc_name, j.schedule_interval, j.config::text AS config, s.last_run_status,"
        " s.last_run_started_at, s.next_start FROM timescaledb_information.jobs j"
        " LEFT JOIN timescaledb_information.job_stats s USING (job_id)"
        " WHERE j.hypertable_name = $1 ORDER BY j.job_id",
        table,
    )
    return {
        "chunk_interval": _show(policy.chunk_interval),
        "chunks": [row["chunk_name"] for row in chunks],
        "compressed_chunks": sum(1 for row in chunks if row["is_compressed"]),
        "compress_segmentby": policy.segmentby,
        "compress_orderby": policy.orderby,
        "compression_after": _show(policy.compress_after),
        "retention": _show(policy.drop_after),
        "jobs": [
            {
                "job_id": job["job_id"],
                "proc": job["proc_name"],
                "schedule": _show(job["schedule_interval"]),
                "config": job["config"],
                "last_run": job["last_run_status"],
                "last_run_started_at": job["last_run_started_at"].isoformat() if job["last_run_started_at"] else None,
                "next_start": job["next_start"].isoformat() if job["next_start"] else None,
            }
            for job in jobs
        ],
    }


def _norm(columns: str) -> str:
    """Column lists as the server prints them and as we write them compare equal ("ts DESC" vs "ts desc")."""
    return ",".join(" ".join(part.split()).lower().replace('"', "") for part in columns.split(",") if part.strip())


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, timedelta) and value.seconds == 0 and value.microseconds == 0:
        return f"{value.days} day(s)"
    return str(value)


def _short(regclass_text: str) -> str:
    return str(regclass_text).rsplit(".", 1)[-1].strip('"')
