"""Connections and error mapping shared by the schema runner, the writer and the ``db`` commands.

Every asyncpg or socket error leaves this package as a :class:`StorageError`; the ones a retry may cure (the
server is down, restarting, out of connections, a broken connection, a serialization conflict) as
:class:`StorageUnavailable`, so the sink knows whether to back off and retry or to set the batch aside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from market_ingestor.errors import StorageError, StorageUnavailable

# SQLSTATE classes worth a retry: connection exception, insufficient resources, operator intervention
# (admin shutdown, cannot connect now), transaction rollback (serialization failure, deadlock).
_TRANSIENT_CLASSES = ("08", "53", "57", "40")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _TRANSIENT_CLASSES


@contextmanager
def storage_errors(doing: str) -> Iterator[None]:
    """Wraps database errors raised inside as StorageError / StorageUnavailable naming what was being done."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if is_transient(exc):
            raise StorageUnavailable(f"{doing}: the database is unavailable ({reason}); retry later") from exc
        raise StorageError(f"{doing}: {reason}") from exc


async def connect(database_url: str, timeout_s: float = 10.0) -> asyncpg.Connection:  # float-ok: seconds
    return await asyncpg.connect(database_url, timeout=timeout_s)
