"""API keys: created, listed and revoked by ``market-ingestor apikeys``; verified by the query API and the push
gateway through :class:`KeyVerifier`.

A key looks like ``mi_3f9a1c2b7d4e_<43 random url-safe characters>``: a public id (12 hex digits, shown by
``apikeys list`` and in logs) and a 256-bit secret. The database keeps only the SHA-256 of the whole key: with
that much randomness a slow password hash adds nothing, and a leaked table reveals no usable key. The key is
printed once, at creation.

Verification must not cost a database round trip per request: :class:`KeyVerifier` caches each id's row (or its
absence) for ``ttl_s``, so a revoked key stops working within that time on every instance. Concurrent requests
for the same uncached id share one query; malformed keys are refused without any.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, Protocol

import msgspec

KEY_PREFIX = "mi_"
_KEY = re.compile(r"mi_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class KeyInfo(msgspec.Struct, frozen=True):
    """What a valid key grants: who it is and its own rate limit (None: the configured default)."""

    id: str
    name: str
    rate_limit_per_s: int | None = None
    rate_limit_burst: int | None = None


class KeyRecord(msgspec.Struct, frozen=True):
    """A key as ``apikeys list`` shows it: never the secret."""

    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    rate_limit_per_s: int | None
    rate_limit_burst: int | None


class CreatedKey(msgspec.Struct, frozen=True):
    id: str
    name: str
    key: str  # shown once


class Queryable(Protocol):
    """An asyncpg connection or pool."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def execute(self, query: str, *args: Any) -> str: ...


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> tuple[str, str]:
    """(id, key) for a fresh key."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


async def create_key(
    db: Queryable, name: str, rate_limit_per_s: int | None = None, rate_limit_burst: int | None = None
) -> CreatedKey:
    key_id, key = new_key()
    await db.execute(
        "INSERT INTO api_keys (id, name, key_hash, rate_limit_per_s, rate_limit_burst) VALUES ($1, $2, $3, $4, $5)",
        key_id, name, key_hash(key), rate_limit_per_s, rate_limit_burst,
    )  # fmt: skip
    return CreatedKey(key_id, name, key)


async def list_keys(db: Queryable) -> list[KeyRecord]:
    rows = await db.fetch(
        "SELECT id, name, created_at, revoked_at, rate_limit_per_s, rate_limit_burst FROM api_keys"
        " ORDER BY created_at, id"
    )
    return [KeyRecord(**dict(row)) for row in rows]


async def revoke_key(db: Queryable, key_id: str) -> bool:
    """True when the key existed and was active; revoking twice keeps the first time."""
    status = await db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
    return status == "UPDATE 1"


class _Row(msgspec.Struct, frozen=True):
    info: KeyInfo
    hash: bytes


class KeyVerifier:
    """``await verify(key)`` -> :class:`KeyInfo` for an active key, None otherwise; see the module docstring."""

    def __init__(self, db: Queryable, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:  # float-ok: seconds
        self._db = db
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, _Row | None]] = OrderedDict()  # float-ok: expiry
        self._pending: dict[str, asyncio.Future[_Row | None]] = {}  # the lookups in flight

    async def verify(self, key: str) -> KeyInfo | None:
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        row = await self._row(match.group(1))
        if row is None or not hmac.compare_digest(row.hash, key_hash(key)):
            return None
        return row.info

    async def _row(self, key_id: str) -> _Row | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        # One query per uncached id however many requests wait for it; a task of its own, so a requester that
        # gives up (client gone) does not cancel it for the others.
        task = self._pending.get(key_id)
        if task is None:
            task = asyncio.ensure_future(self._load(key_id))
            self._pending[key_id] = task
            task.add_done_callback(lambda done: self._loaded(key_id, done))
        return await asyncio.shield(task)

    def _loaded(self, key_id: str, task: asyncio.Future[_Row | None]) -> None:
        del self._pending[key_id]
        if not task.cancelled() and task.exception() is None:
            self._remember(key_id, task.result(), time.monotonic())

    async def _load(self, key_id: str) -> _Row | None:
        record = await self._db.fetchrow(
            "SELECT name, key_hash, rate_limit_per_s, rate_limit_burst FROM api_keys"
            " WHERE id = $1 AND revoked_at IS NULL",
            key_id,
        )
        if record is None:
            return None
        info = KeyInfo(key_id, record["name"], record["rate_limit_per_s"], record["rate_limit_burst"])
        return _Row(info, bytes(record["key_hash"]))

    def _remember(self, key_id: str, row: _Row | None, now: float) -> None:  # float-ok: monotonic seconds
        self._cache[key_id] = (now + self._ttl_s, row)
        self._cache.move_to_end(key_id)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
