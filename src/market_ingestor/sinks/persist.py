"""One batch of bus records -> rows in the database, durably, whatever the database does meanwhile.

:meth:`Persister.persist` returns only once every record of the batch is either in the database (one
transaction per batch, idempotent: see :mod:`market_ingestor.sinks.writer`) or on the dead-letter topic with
its reason; only then may the caller commit the batch's offsets.

- A record that does not decode into its topic's type, or holds a non-finite number, goes to the dead-letter
  topic; the rest of the batch is written.
- A batch the database refuses because of its data (SQLSTATE classes 21, 22, 23: a value out of range, a
  constraint; or a value the client cannot encode) is split in halves until the offending rows are found;
  those are dead-lettered, the others written. One bad row never blocks the stream.
- Any other failure (connection refused or terminated, server shutting down, timeout, missing table) is retried
  with exponential backoff, forever: the batch is held and no record behind it is committed, so the sink stops
  consuming until the database is back. Every retry is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import asyncpg
import msgspec

from market_ingestor.config import Config, StorageConfig
from market_ingestor.errors import StorageError, StorageUnavailable
from market_ingestor.model import DeadLetter, IndicatorValue, Kline, Quote, Topics, Trade, decoder_for, encode
from market_ingestor.sinks import metrics
from market_ingestor.sinks.schema import SchemaMode, migrate
from market_ingestor.sinks.writer import TABLES

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


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float  # float-ok: a duration
    max_s: float  # float-ok: a duration

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


def number_problem(event: Row) -> str | None:
    """A non-finite number (NaN, Infinity) cannot be a price, amount or indicator value in the database."""
    for name in event.__struct_fields__:
        value = getattr(event, name)
        values = value.values() if isinstance(value, dict) else (value,)
        for item in values:
            if isinstance(item, Decimal) and not item.is_finite():
                return f"{type(event).__name__.lower()} field {name} is {item}"
    return None


class RowDecoder:
    """Decodes one topic's records; what cannot become a row becomes a dead letter."""

    def __init__(self, row_type: type[Row]) -> None:
        self.row_type = row_type
        self.table = TABLES[row_type].name
        self._decoder = decoder_for(row_type)

    def decode(self, values: Sequence[bytes | None], now_ns: int) -> tuple[list[Row], list[DeadLetter]]:
        rows: list[Row] = []
        dead: list[DeadLetter] = []
        for value in values:
            try:
                row = self._decoder.decode(value or b"")
            except msgspec.MsgspecError as exc:
                raw = (value or b"").decode("utf-8", "replace")[:_RAW_MAX_CHARS]
                dead.append(DeadLetter("sink", raw, f"not a {self.row_type.__name__}: {exc}", now_ns))
                continue
            problem = number_problem(row)
            if problem is not None:
                dead.append(DeadLetter(row.exchange, encode(row).decode(), problem, now_ns))
                continue
            rows.append(row)
        return rows, dead


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


class _Rejected(Exception):
    """The database refused the batch because of its data."""


class Persister:
    def __init__(self, writer: Writer, dead_letters: DeadLetterOut, backoff: Backoff) -> None:
        self.writer = writer
        self.dead_letters = dead_letters
        self.backoff = backoff
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

    async def persist(self, decoder: RowDecoder, topic: str, values: Sequence[bytes | None]) -> None:
        """Returns once each record is either stored or dead-lettered (see the module docstring)."""
        metrics.BATCH_SIZE.labels(topic).observe(len(values))
        with metrics.FLUSH_SECONDS.labels(topic).time():
            await self._persist(decoder, topic, values)

    async def _persist(self, decoder: RowDecoder, topic: str, values: Sequence[bytes | None]) -> None:
        now = time.time_ns()
        rows, dead = decoder.decode(values, now)
        if rows:
            refused = await self._write_splitting(rows, topic, now)
            metrics.ROWS.labels(decoder.table).inc(len(rows) - len(refused))
            dead.extend(refused)
        if dead:
            metrics.DEAD_LETTERS.labels(topic).inc(len(dead))
            log.warning("records dead-lettered", extra={"topic": topic, "count": len(dead), "first": dead[0].reason})
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
        delays = self.backoff.delays()
        attempt = 0
        while True:
            try:
                await self._ensure_started()
                with metrics.WRITE_SECONDS.time():
                    await self.writer.write(rows)
                self.failing_since = None
                if attempt:
                    log.info("database write succeeded after retries", extra={"topic": topic, "attempts": attempt})
                return
            except Exception as exc:
                if is_data_error(exc):
                    raise _Rejected(str(exc)) from exc
                attempt += 1
                delay = next(delays)
                metrics.RETRIES.labels(topic).inc()
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.warning(
                    "database write failed, retrying",
                    extra={"topic": topic, "rows": len(rows), "attempt": attempt, "retry_in_s": delay,
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


async def migrate_when_available(database_url: str, settings: StorageConfig, backoff: Backoff) -> SchemaMode:
    """Applies pending migrations, waiting (with backoff) for a database that is not reachable yet."""
    delays = backoff.delays()
    while True:
        try:
            return await migrate(database_url, settings)
        except StorageUnavailable as exc:
            delay = next(delays)
            log.warning("cannot migrate yet, retrying", extra={"retry_in_s": delay, "error": str(exc)})
            await asyncio.sleep(delay)
