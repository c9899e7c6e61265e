"""Plain PostgreSQL: day partitions of the time-partitioned tables, created ahead and on demand, dropped past
retention. (With TimescaleDB, chunks and retention are TimescaleDB's business and nothing here runs.)

Partitions are ranges of ``partition_interval_days`` whole UTC days aligned to the epoch
(``[epoch + k*n days, epoch + (k+1)*n days)``), named ``{table}_p{YYYYMMDD}`` after their first day. The catalog
(``pg_inherits`` and each partition's bound) is the truth, so a changed interval never creates an overlap: only
the parts of a range no partition covers yet are created.

There is no default partition: a row for a day without one would fail, so every writer first makes sure its
batch's days exist (:func:`ensure_days`); that is a catalog read the first time a day is seen, nothing after.
Creating a partition locks the parent briefly; it happens in its own short transaction under an advisory lock,
never inside a write.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg

from market_ingestor.config import StorageConfig

logger = logging.getLogger(__name__)

DAY_NS = 86_400 * 10**9
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Tables whose rows are kept by kline_retention_days (the rest by retention_days).
LONG_LIVED = frozenset({"market_klines", "indicator_values"})

_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


class Partition:
    __slots__ = ("hi", "lo", "name")

    def __init__(self, name: str, lo: datetime, hi: datetime) -> None:
        self.name, self.lo, self.hi = name, lo, hi

    def __repr__(self) -> str:
        return f"Partition({self.name}, {self.lo.isoformat()}, {self.hi.isoformat()})"


def bucket_of(ts_ns: int, interval_days: int) -> int:
    """The index of the partition range holding ``ts_ns``."""
    return ts_ns // (DAY_NS * interval_days)


def bucket_range(bucket: int, interval_days: int) -> tuple[datetime, datetime]:
    lo = EPOCH + timedelta(days=bucket * interval_days)
    return lo, lo + timedelta(days=interval_days)


def _lock_key(table: str) -> int:
    return zlib.crc32(f"market_ingestor.partitions.{table}".encode())


async def list_partitions(conn: asyncpg.Connection, table: str) -> list[Partition]:
    """The range partitions of ``table``, oldest first (run in a transaction: it sets the time zone locally)."""
    await conn.execute("SET LOCAL TimeZone = 'UTC'")
    rows = await conn.fetch(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass""",
        table,
    )
    out = []
    for row in rows:
        match = _BOUND.fullmatch(row["bound"] or "")
        if match is not None:  # a DEFAULT or MINVALUE/MAXVALUE partition someone added by hand: not ours
            out.append(Partition(row["relname"], _parse_ts(match.group(1)), _parse_ts(match.group(2))))
    return sorted(out, key=lambda p: p.lo)


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _gaps(lo: datetime, hi: datetime, existing: list[Partition]) -> list[tuple[datetime, datetime]]:
    """The parts of [lo, hi) that no existing partition covers."""
    gaps = []
    cursor = lo
    for part in existing:
        if part.hi <= cursor or part.lo >= hi:
            continue
        if part.lo > cursor:
            gaps.append((cursor, part.lo))
        cursor = max(cursor, part.hi)
    if cursor < hi:
        gaps.append((cursor, hi))
    return gaps


def _name(table: str, lo: datetime) -> str:
    suffix = f"{lo:%Y%m%d}" if lo.time() == datetime.min.time() else f"{lo:%Y%m%d%H%M%S}"
    return f"{table}_p{suffix}"


async def ensure_days(conn: asyncpg.Connection, table: str, buckets: Iterable[int], interval_days: int) -> list[str]:
    """Creates the partitions that the ranges ``buckets`` (see :func:`bucket_of`) lack; returns their names."""
    wanted = sorted(set(buckets))
    if not wanted:
        return []
    created: list[str] = []
    async with conn.transaction():
        # Creating a partition locks the parent exclusively: rather than queue every reader and writer behind a
        # long query for minutes, give up after a while (the caller retries; partitions are normally made ahead).
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(table))
        existing = await list_partitions(conn, table)
        for bucket in wanted:
            lo, hi = bucket_range(bucket, interval_days)
            for gap_lo, gap_hi in _gaps(lo, hi, existing):
                name = _name(table, gap_lo)
                await conn.execute(
                    f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES FROM (\'{gap_lo.isoformat()}\') '
                    f"TO ('{gap_hi.isoformat()}')"
                )
                existing.append(Partition(name, gap_lo, gap_hi))
                existing.sort(key=lambda p: p.lo)
                created.append(name)
                logger.info("partition created", extra={"table": table, "partition": name})
    return created


async def drop_before(conn: asyncpg.Connection, table: str, cutoff: datetime) -> list[str]:
    """Drops the partitions of ``table`` that end at or before ``cutoff``; returns their names."""
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(table))
        for part in await list_partitions(conn, table):
            if part.hi <= cutoff:
                await conn.execute(f'DROP TABLE "{part.name}"')
                dropped.append(part.name)
                logger.info("partition dropped (retention)", extra={"table": table, "partition": part.name})
    return dropped


async def maintain_partitions(
    conn: asyncpg.Connection, tables: Iterable[str], settings: StorageConfig, now: datetime | None = None
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Creates partitions from yesterday to ``partitions_ahead_days`` ahead and drops those past retention;
    returns the names created and dropped, per table."""
    now = now or datetime.now(UTC)
    now_ns = (now - EPOCH) // timedelta(microseconds=1) * 1000
    days = settings.partition_interval_days
    first = bucket_of(now_ns - DAY_NS, days)
    last = bucket_of(now_ns + settings.partitions_ahead_days * DAY_NS, days)
    created: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    for table in tables:
        created[table] = await ensure_days(conn, table, range(first, last + 1), days)
        keep_days = settings.kline_retention_days if table in LONG_LIVED else settings.retention_days
        dropped[table] = await drop_before(conn, table, now - timedelta(days=keep_days)) if keep_days else []
    return created, dropped
