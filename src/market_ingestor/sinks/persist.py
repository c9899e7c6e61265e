"""Bus records -> rows in the database, durably, whatever the database does meanwhile.

:class:`RowDecoder` reads one record of a hot topic (a JSON array of events, ``bus/records.py``) into its rows,
and dead letters for its events that cannot be rows. :meth:`Persister.persist` returns only once every row of a
batch is either in the database (one transaction per batch, idempotent: see :mod:`market_ingestor.sinks.writer`)
or on the dead-letter topic with its reason; only then may the caller commit the offsets of the batch's records.

- An event that does not decode into its topic's type, or holds a non-finite number, goes to the dead-letter
  topic; the other events of its record, and the rest of the batch, are written. A record that is not JSON at
  all is one dead letter.
- A batch the database refuses because of its data (SQLSTATE classes 21, 22, 23: a value out of range, a
  constraint; or a value the client cannot encode) is split in halves until the offending rows are found;
  those are dead-lettered, the others written. One bad row never blocks the stream.
- An outage (connection refused or terminated, server shutting down or out of connections, timeout, a
  serialization conflict: :func:`is_outage`) is retried with exponential backoff, forever: the batch is held and
  no record behind it is committed, so the sink stops consuming until the database is back. Every retry is
  logged and counted.
- Anything else (a missing table, a TypeError) is a fault, not an outage: it is logged and raised, and the sink
  stops with it (nothing of the batch is committed) rather than look like a database that is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, get_args, get_origin

import asyncpg
import msgspec

from market_ingestor.bus.records import BatchDecoder
from market_ingestor.bus.topics import Topics
from market_ingestor.config import Config, SinkConfig, StorageConfig
from market_ingestor.errors import StorageError, StorageUnavailable
from market_ingestor.model import DeadLetter, IndicatorValue, Kline, Quote, Trade, encode
from market_ingestor.retry import RetryPolicy
from market_ingestor.sinks import metrics
from market_ingestor.sinks.connect import is_transient
from market_ingestor.sinks.schema import SchemaMode, migrate
from market_ingestor.sinks.writer import TABLES
from market_ingestor.validity import trade_problem

log = logging.getLogger(__name__)

Row = Trade | Kline | IndicatorValue | Quote
DeadLetterOut = Callable[[Sequence[DeadLetter]], Awaitable[None]]

_RAW_MAX_CHARS = 65_536  # of an undecodable record kept in its dead letter
_DATA_ERROR_CLASSES = ("21", "22", "23")  # cardinality, data exception, integrity constraint violation


class Writer(Protocol):
    """What the sink needs from :class:`market_ingestor.sinks.writer.RowWriter`."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, events: Sequence[Row]) -> object:
        """All of ``events`` in one transaction, idempotently."""

    async def maintain(self) -> None:
        """Partitions ahead, retention."""


def sink_topics(config: Config) -> dict[str, type[Row]]:
    """Logical topic -> row type of what the sink stores; quotes only with ``storage.store_quotes``."""
    topics: dict[str, type[Row]] = {Topics.TRADES: Trade, Topics.KLINES: Kline, Topics.INDICATORS: IndicatorValue}
    if config.storage.store_quotes:
        topics[Topics.QUOTES] = Quote
    return topics


def sink_group(config: Config) -> str:
    return f"{config.streams.app_id}-sink"


def outage_retry(settings: SinkConfig) -> RetryPolicy:
    """Database outages: ``retry_initial_s`` doubling to ``retry_max_s``, forever (the batch is held meanwhile)."""
    return RetryPolicy(settings.retry_initial_s, settings.retry_max_s)


def row_problem(event: Row) -> str | None:
    """Why a row cannot be stored, or None: a trade must pass the trade rule (``validity.trade_problem``), any
    other row must hold only finite numbers."""
    return trade_problem(event) if isinstance(event, Trade) else number_problem(event)


def number_problem(event: Row) -> str | None:
    """A non-finite number (NaN, Infinity) cannot be a price, amount or indicator value in the database."""
    for name in _decimal_fields(type(event)):
        value = getattr(event, name)
        values = value.values() if isinstance(value, dict) else (value,)
        for item in values:
            if isinstance(item, Decimal) and not item.is_finite():
                return f"{type(event).__name__.lower()} field {name} is {item}"
    return None


_DECIMAL_FIELDS: dict[type, tuple[str, ...]] = {}


def _decimal_fields(row_type: type[Row]) -> tuple[str, ...]:
    """The fields of ``row_type`` that hold Decimals (alone or as a dict's values): the only ones to check."""
    fields = _DECIMAL_FIELDS.get(row_type)
    if fields is None:
        fields = _DECIMAL_FIELDS[row_type] = tuple(
            field.name
            for field in msgspec.structs.fields(row_type)
            if field.type is Decimal or (get_origin(field.type) is dict and get_args(field.type)[1] is Decimal)
        )
    return fields


@dataclass(slots=True)
class Decoded:
    """One bus record read by :class:`RowDecoder`: its rows, and a dead letter per event that is not one."""

    rows: list[Row]
    dead: list[DeadLetter]

    def __len__(self) -> int:
        """What the record weighs in a batch: each of its events (at least 1, so an empty record still counts)."""
        return max(1, len(self.rows) + len(self.dead))


class RowDecoder:
    """Decodes one topic's records; what cannot become a row becomes a dead letter."""

    def __init__(self, row_type: type[Row]) -> None:
        self.row_type = row_type
        self.table = TABLES[row_type].name
        self._batch: BatchDecoder[Row] = BatchDecoder(row_type)
        self._checked = _decimal_fields(row_type)

    def decode(self, value: bytes | None, now_ns: int) -> Decoded:
        """The rows of one record (a JSON array of events, or one event). The whole array is decoded at once;
        only a record that fails is read event by event, so its good events are still stored."""
        try:
            rows: list[Row] = self._batch.decode(value or b"")
            dead: list[DeadLetter] = []
        except msgspec.MsgspecError:
            rows, bad = self._batch.split(value or b"")
            dead = [DeadLetter("sink", _text(raw), reason, now_ns) for raw, reason in bad]
        if self._checked and any(row_problem(row) for row in rows):
            good: list[Row] = []
            for row in rows:
                problem = row_problem(row)
                if problem is None:
                    good.append(row)
                else:
                    dead.append(DeadLetter(row.exchange, encode(row).decode(), problem, now_ns))
            rows = good
        return Decoded(rows, dead)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")[:_RAW_MAX_CHARS]


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause: the writer wraps asyncpg's errors) says the *rows* are unacceptable: a
    PostgreSQL error of SQLSTATE class 21, 22 or 23, or a value the client could not encode for its column."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, asyncpg.PostgresError):
            code: Any = getattr(seen, "sqlstate", None)
            return isinstance(code, str) and code[:2] in _DATA_ERROR_CLASSES
        if isinstance(seen, ValueError | OverflowError):  # incl. asyncpg.DataError: invalid input for a column
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached for now (down, restarting, out of connections, a broken
    connection, a serialization conflict): what a retry may cure. The writer wraps those as StorageUnavailable;
    raw ones are classified as :func:`~market_ingestor.sinks.connect.is_transient` does. Anything else (a
    TypeError, an undefined table) is a fault to report, not an outage to wait out."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, StorageUnavailable) or is_transient(seen):
            return True
        seen = seen.__cause__  # not __context__: a bug raised while handling an outage is still a bug
    return False


class _Rejected(Exception):
    """The database refused the batch because of its data."""


class Persister:
    def __init__(self, writer: Writer, dead_letters: DeadLetterOut, retry: RetryPolicy) -> None:
        self.writer = writer
        self.dead_letters = dead_letters
        self.retry = retry  # database outages: retried forever (the batch is held)
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self.failing_since: float | None = None  # float-ok: monotonic time of the first failed write of a streak
        self.last_error = ""

    def database_state(self) -> dict[str, object]:
        """For ``/healthz``: whether writes currently succeed, and why not."""
        if self.failing_since is None:
            return {"database": "ok"}
        failing_s = round(time.monotonic() - self.failing_since, 1)
        return {"database": "retrying", "failing_s": failing_s, "error": self.last_error}

    async def close(self) -> None:
        """Closes the writer for good: a write after this waits (retrying) until it is cancelled."""
        self._closed = True
        if self._started:
            self._started = False
            await self.writer.close()

    async def maintain_every(self, interval_s: float) -> None:  # float-ok: a duration
        """Runs the writer's maintenance now and then every ``interval_s``, until cancelled. A failure is logged
        and tried again next time: partitions for the rows being written are made on demand anyway."""
        while True:
            try:
                await self._ensure_started()
                await self.writer.maintain()
            except Exception as exc:  # best effort: logged with its reason, never fatal to the sink
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("database maintenance failed", extra={"error": reason, "retry_in_s": interval_s})
            await asyncio.sleep(interval_s)

    async def persist(self, table: str, topic: str, records: Sequence[Decoded]) -> None:
        """Returns once each row of ``records`` is either stored in ``table`` or dead-lettered (see the module
        docstring)."""
        rows = [row for record in records for row in record.rows]
        dead = [letter for record in records for letter in record.dead]
        metrics.BATCH_SIZE.labels(topic).observe(len(rows) + len(dead))
        with metrics.FLUSH_SECONDS.labels(topic).time():
            await self._persist(table, topic, rows, dead)

    async def _persist(self, table: str, topic: str, rows: list[Row], dead: list[DeadLetter]) -> None:
        if rows:
            refused = await self._write_splitting(rows, topic, time.time_ns())
            metrics.ROWS.labels(table).inc(len(rows) - len(refused))
            dead.extend(refused)
        if dead:
            metrics.DEAD_LETTERS.labels(topic).inc(len(dead))
            log.warning("events dead-lettered", extra={"topic": topic, "count": len(dead), "first": dead[0].reason})
            await self.dead_letters(dead)

    async def _write_splitting(self, rows: Sequence[Row], topic: str, now_ns: int) -> list[DeadLetter]:
        try:
            await self._write(rows, topic)
            return []
        except _Rejected as exc:
            if len(rows) == 1:
                row = rows[0]
                return [DeadLetter(row.exchange, encode(row).decode(), f"refused by the database: {exc}", now_ns)]
        half = len(rows) // 2
        return await self._write_splitting(rows[:half], topic, now_ns) + await self._write_splitting(
            rows[half:], topic, now_ns
        )

    async def _write(self, rows: Sequence[Row], topic: str) -> None:
        retries = self.retry.retries(f"database write of {topic}")
        while True:
            try:
                await self._ensure_started()
                with metrics.WRITE_SECONDS.time():
                    await self.writer.write(rows)
                self.failing_since = None
                if retries.attempt:
                    log.info(
                        "database write succeeded after retries", extra={"topic": topic, "attempts": retries.attempt}
                    )
                return
            except Exception as exc:
                if is_data_error(exc):
                    raise _Rejected(str(exc)) from exc
                if not (self._closed or is_outage(exc)):
                    log.error(
                        "database write failed with an error that is not an outage: not retrying",
                        extra={"topic": topic, "rows": len(rows), "error": f"{type(exc).__name__}: {exc}"},
                    )
                    raise
                delay = retries.next_delay_s()
                metrics.RETRIES.labels(topic).inc()
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.warning(
                    "database write failed, retrying",
                    extra={"topic": topic, "rows": len(rows), "attempt": retries.attempt, "retry_in_s": delay,
                           "error": f"{type(exc).__name__}: {exc}"},
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _ensure_started(self) -> None:
        # Started on first use and inside the retry loop: a database that is down when the sink starts is
        # waited for like one that goes down later.
        if self._started:
            return
        if self._closed:
            raise StorageError("the sink is shutting down; its database connections are closed")
        async with self._start_lock:
            if not self._started:
                await self.writer.start()
                self._started = True


async def migrate_when_available(database_url: str, settings: StorageConfig, retry: RetryPolicy) -> SchemaMode:
    """Applies pending migrations, waiting (retrying under ``retry``) for a database that is not reachable yet."""
    retries = retry.retries("schema migration")
    while True:
        try:
            return await migrate(database_url, settings)
        except StorageUnavailable as exc:
            delay = retries.next_delay_s()
            log.warning("cannot migrate yet, retrying", extra={"retry_in_s": delay, "error": str(exc)})
            await asyncio.sleep(delay)
