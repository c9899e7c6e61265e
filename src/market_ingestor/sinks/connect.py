"""Connections and error mapping shared by the schema runner, the writer and the ``db`` commands.

Every asyncpg or socket error leaves this package as a :class:`StorageError`; the ones a retry may cure (the
server is down, restarting, out of connections, a broken connection, a serialization conflict) as
:class:`StorageUnavailable`, so the sink knows whether to back off and retry or to set the batch aside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import asyncpg

from market_ingestor.errors import StorageError, StorageUnavailable

# SQLSTATE classes worth a retry: connection exception, insufficient resources, operator intervention
# (admin shutdown, cannot connect now), transaction rollback (serialization failure, deadlock); a lock
# not obtained within lock_timeout; and a database not accepting connections (ALTER DATABASE ... ALLOW_CONNECTIONS
# false: taken offline for maintenance).
_TRANSIENT_CLASSES = ("08", "53", "57", "40")
_TRANSIENT_STATES = ("55P03", "55000")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError):  # ValueError: DataError
        # The client's view of a connection that broke under an operation: "connection is closed", "another
        # operation is in progress" (seen after a connection was terminated mid-COPY); a new connection cures it.
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True  # "cannot switch to state 15; another operation is in progress": the same, one layer down
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and (sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_STATES)


@contextmanager
def storage_errors(doing: str) -> Iterator[None]:
    """Wraps database errors raised inside as StorageError / StorageUnavailable naming what was being done."""
    try:
        yield
    except StorageError:
        raise
    # ValueError / OverflowError: a value the client cannot encode for its column (COPY raises them unwrapped).
    except (
        OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
        ValueError, OverflowError,
    ) as exc:  # fmt: skip
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if is_transient(exc):
            raise StorageUnavailable(f"{doing}: the database is unavailable ({reason}); retry later") from exc
        raise StorageError(f"{doing}: {reason}") from exc


async def connect(database_url: str, timeout_s: float = 10.0) -> asyncpg.Connection:  # float-ok: seconds
    """A connection whose NUMERIC values read back exactly as PostgreSQL prints them (see :func:`numeric_as_text`)."""
    conn = await asyncpg.connect(database_url, timeout=timeout_s)
    await numeric_as_text(conn)
    return conn


async def numeric_as_text(conn: asyncpg.Connection) -> None:
    """NUMERIC through its text form both ways. asyncpg's binary decoder gives the same value but not always the
    same digits: 3906250000 (scale 0) comes back as Decimal('3.90625E+9'); the text form keeps the stored scale."""
    await conn.set_type_codec("numeric", schema="pg_catalog", encoder=str, decoder=Decimal, format="text")
