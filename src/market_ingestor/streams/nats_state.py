"""JetStream I/O of the stream worker on NATS: shard leases, state rows and checkpoints in key-value buckets, and an
in-order reader of one stream. The worker itself is ``streams/nats_worker.py``; the design, docs/nats-worker.md.

- :class:`Leases`: bucket ``{app}_leases`` with a TTL. Each worker renews ``member.{id}`` and the ``shard.{n}``
  keys it holds; a key not renewed within the TTL expires, which is how a killed or paused worker's shards free
  up. Claims are ``create`` (succeeds only on an absent key), renewals ``update`` at the held revision, so two
  workers never both hold a shard.
- :class:`Rows`: one bucket per stage (``{app}_klines``, ``{app}_indicators``), a row per instrument. Every
  write is checked against the revision this worker last read or wrote: a row another worker wrote meanwhile is
  not overwritten, and its shard is given up.
- Checkpoints: ``{app}_progress``, ``{stage}.{shard}`` = the stream sequence the shard's next message starts at.
- :class:`StreamReader`: an ephemeral pull consumer without acks from a start sequence; a gap in the consumer
  sequence (messages lost in flight) restarts it after the last message seen, so the worker gets every message
  once and in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import APIError, NotFoundError

from market_ingestor.bus.nats import stream_name
from market_ingestor.errors import BusError
from market_ingestor.streams.shards import shard_of

log = logging.getLogger(__name__)

_KV_OPERATION = "KV-Operation"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes for a failed revision check
_WRITES_AT_ONCE = 256  # revision-checked writes in flight together
_READ_BATCH = 1024


def bucket_name(app_id: str, purpose: str) -> str:
    """A bucket name from the app id (bucket names allow letters, digits, ``-`` and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{app_id}_{purpose}")


async def ensure_bucket(js: JetStreamContext, bucket: str, *, ttl_s: float | None = None, memory: bool = False) -> None:
    try:
        await js.key_value(bucket)
    except (NotFoundError, BusError, NatsError):
        config = KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s)
        if memory:
            config.storage = StorageType.MEMORY
        await js.create_key_value(config)


@dataclass(frozen=True, slots=True)
class Entry:
    value: bytes
    revision: int


async def read_bucket(js: JetStreamContext, bucket: str) -> dict[str, Entry]:
    """Every live key of a bucket with its value and revision, in one pass (one message per key)."""
    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    try:
        if (await js.stream_info(stream)).state.messages == 0:
            return {}
        # The server forgets this consumer 5 s after its last fetch (a read every lease round leaves none behind).
        subscription = await js.pull_subscribe(
            prefix + ">",
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE, inactive_threshold=5.0
            ),
        )
    except NatsError as exc:
        raise BusError(f"cannot read the key-value bucket {bucket!r}: {exc!r}") from exc
    entries: dict[str, Entry] = {}
    try:
        while True:
            try:
                messages = await subscription.fetch(batch=_READ_BATCH, timeout=5.0)
            except (TimeoutError, NatsTimeoutError):
                return entries  # everything there was has come (keys deleted meanwhile leave no message)
            for message in messages:
                key = message.subject[len(prefix) :]
                if message.headers and message.headers.get(_KV_OPERATION) in ("DEL", "PURGE"):
                    entries.pop(key, None)
                else:
                    entries[key] = Entry(message.data, message.metadata.sequence.stream)
            if messages[-1].metadata.num_pending == 0:
                return entries
    except NatsError as exc:
        raise BusError(f"cannot read the key-value bucket {bucket!r}: {exc!r}") from exc
    finally:
        await subscription.unsubscribe()


async def write_checked(js: JetStreamContext, bucket: str, values: Mapping[str, tuple[bytes, int]]) -> dict[str, int]:
    """Writes ``key -> (value, expected revision)`` (0: the key must not exist), pipelined. Returns the new
    revision of each key written; a key whose revision check failed is left out (another worker owns it)."""
    written: dict[str, int] = {}
    items = list(values.items())
    for start in range(0, len(items), _WRITES_AT_ONCE):
        chunk = items[start : start + _WRITES_AT_ONCE]
        results = await asyncio.gather(
            *(
                js.publish(f"$KV.{bucket}.{key}", value, headers={_EXPECTED_LAST: str(revision)})
                for key, (value, revision) in chunk
            ),
            return_exceptions=True,
        )
        for (key, _), result in zip(chunk, results, strict=True):
            if isinstance(result, APIError) and result.err_code in _WRONG_LAST_SEQUENCE:
                continue
            if isinstance(result, BaseException):
                raise BusError(f"cannot write {key!r} to the key-value bucket {bucket!r}: {result!r}") from result
            written[key] = result.seq
    return written


class Leases:
    """This worker's membership and shard leases (see the module docstring)."""

    def __init__(self, js: JetStreamContext, bucket: str, me: str, shards: int, ttl_s: float) -> None:
        self.js = js
        self.bucket = bucket
        self.me = me
        self.shards = shards
        self.ttl_s = ttl_s
        self.held: dict[int, int] = {}  # shard -> revision of our lease
        self._renewed = 0.0  # monotonic time of the last round that renewed every held lease

    async def start(self) -> None:
        await ensure_bucket(self.js, self.bucket, ttl_s=self.ttl_s)

    def valid(self) -> bool:
        """Whether the held leases are still certainly ours: renewed less than a TTL ago (with a margin)."""
        return time.monotonic() - self._renewed < self.ttl_s * 0.8

    async def look(self) -> tuple[set[str], dict[int, str]]:
        """The live members and the holder of each leased shard, after renewing our member key."""
        entries = await read_bucket(self.js, self.bucket)
        members = {key[len("member.") :] for key in entries if key.startswith("member.")}
        holders: dict[int, str] = {}
        for key, entry in entries.items():
            if key.startswith("shard."):
                holders[int(key[len("shard.") :])] = entry.value.decode()
        return members | {self.me}, holders

    async def heartbeat(self) -> None:
        """Says this worker is alive (membership needs no revision check: only this process writes its key)."""
        try:
            await self.js.publish(f"$KV.{self.bucket}.member.{self.me}", b"")
        except NatsError as exc:
            raise BusError(f"cannot renew the membership of worker {self.me}: {exc!r}") from exc

    async def renew(self) -> set[int]:
        """Renews every held lease; returns the shards lost (expired and taken, or taken over)."""
        started = time.monotonic()
        keys = {f"shard.{shard}": (self.me.encode(), revision) for shard, revision in self.held.items()}
        written = await write_checked(self.js, self.bucket, keys)
        lost = {shard for shard in self.held if f"shard.{shard}" not in written}
        for shard in lost:
            del self.held[shard]
        for shard in self.held:
            self.held[shard] = written[f"shard.{shard}"]
        self._renewed = started
        return lost

    async def claim(self, shards: Iterable[int]) -> set[int]:
        """Tries to take free shards; returns those now held."""
        got: set[int] = set()
        for shard in shards:
            key = f"shard.{shard}"
            expected = await self._free_revision(key)
            if expected is None:
                continue
            written = await write_checked(self.js, self.bucket, {key: (self.me.encode(), expected)})
            if key in written:
                self.held[shard] = written[key]
                got.add(shard)
        return got

    async def _free_revision(self, key: str) -> int | None:
        """The revision a claim of a free lease is checked against: 0 for a key that never existed or aged out,
        the delete marker's for a released one; None while someone holds it."""
        try:
            message = await self.js.get_msg(f"KV_{self.bucket}", subject=f"$KV.{self.bucket}.{key}")
        except NotFoundError:
            return 0
        except NatsError as exc:
            raise BusError(f"cannot read lease {key!r}: {exc!r}") from exc
        if message.headers and message.headers.get(_KV_OPERATION) in ("DEL", "PURGE"):
            return message.seq or 0
        return None

    async def release(self, shard: int) -> None:
        revision = self.held.pop(shard, None)
        if revision is None:
            return
        try:
            await self.js.publish(
                f"$KV.{self.bucket}.shard.{shard}",
                b"",
                headers={_KV_OPERATION: "DEL", _EXPECTED_LAST: str(revision)},
            )
        except NatsError as exc:  # it expires by itself within the TTL
            log.warning("lease not released; it expires by itself", extra={"shard": shard, "error": repr(exc)})

    async def leave(self) -> None:
        """A clean stop: give every lease and the membership back at once, so others need not wait the TTL."""
        for shard in list(self.held):
            await self.release(shard)
        with contextlib.suppress(NatsError):
            await self.js.publish(f"$KV.{self.bucket}.member.{self.me}", b"", headers={_KV_OPERATION: "DEL"})


class Rows:
    """One stage's state rows: ``key -> bytes``, each written only at the revision this worker knows."""

    def __init__(self, js: JetStreamContext, bucket: str, shards: int) -> None:
        self.js = js
        self.bucket = bucket
        self.shards = shards
        self.revisions: dict[str, int] = {}

    async def start(self) -> None:
        await ensure_bucket(self.js, self.bucket)

    async def load(self, shards: set[int]) -> dict[str, bytes]:
        """Every stored row of ``shards`` (their revisions remembered for the next writes)."""
        rows: dict[str, bytes] = {}
        for key, entry in (await read_bucket(self.js, self.bucket)).items():
            if shard_of(key.encode(), self.shards) in shards:
                rows[key] = entry.value
                self.revisions[key] = entry.revision
        return rows

    async def save(self, rows: Mapping[str, bytes]) -> set[str]:
        """Writes the rows; returns the keys another worker wrote meanwhile (not written)."""
        written = await write_checked(
            self.js, self.bucket, {key: (value, self.revisions.get(key, 0)) for key, value in rows.items()}
        )
        self.revisions.update(written)
        return set(rows) - set(written)

    def forget(self, shards: set[int]) -> None:
        for key in [key for key in self.revisions if shard_of(key.encode(), self.shards) in shards]:
            del self.revisions[key]


class Progress:
    """The checkpoints of one stage: per shard, the stream sequence its next message starts at."""

    def __init__(self, js: JetStreamContext, bucket: str, stage: str) -> None:
        self.js = js
        self.bucket = bucket
        self.stage = stage
        self.revisions: dict[int, int] = {}

    async def start(self) -> None:
        await ensure_bucket(self.js, self.bucket)

    async def load(self, shards: set[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        for key, entry in (await read_bucket(self.js, self.bucket)).items():
            stage, _, shard = key.rpartition(".")
            if stage == self.stage and int(shard) in shards:
                found[int(shard)] = int(entry.value)
                self.revisions[int(shard)] = entry.revision
        return {shard: found.get(shard, 1) for shard in shards}

    async def save(self, checkpoints: Mapping[int, int]) -> set[int]:
        """Writes the checkpoints; returns the shards another worker wrote meanwhile."""
        values = {
            f"{self.stage}.{shard}": (str(seq).encode(), self.revisions.get(shard, 0))
            for shard, seq in checkpoints.items()
        }
        written = await write_checked(self.js, self.bucket, values)
        lost = set()
        for shard in checkpoints:
            revision = written.get(f"{self.stage}.{shard}")
            if revision is None:
                lost.add(shard)
            else:
                self.revisions[shard] = revision
        return lost

    def forget(self, shards: set[int]) -> None:
        for shard in shards:
            self.revisions.pop(shard, None)


class StreamReader:
    """Every message of one stream from a start sequence, in order, each once (see the module docstring)."""

    def __init__(self, js: JetStreamContext, topic: str) -> None:
        self.js = js
        self.topic = topic
        self.stream = stream_name(topic)
        self.next_seq = 1  # the stream sequence of the next message wanted
        self.pending: int | None = None  # messages after the last one fetched (None: not known since the seek)
        self.read_wall_ns: int | None = None  # wall time of the read that found ``pending``
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._consumer_seq = 0

    async def seek(self, seq: int) -> None:
        """Reads from stream sequence ``seq`` on."""
        await self._close()
        self.next_seq = max(seq, 1)
        self.pending = self.read_wall_ns = None  # what was left after the old position says nothing of the new

    async def _open(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            max_waiting=16,
        )
        try:
            self._subscription = await self.js.pull_subscribe(f"{self.topic}.>", stream=self.stream, config=config)
        except NatsError as exc:
            raise BusError(f"cannot read the stream {self.stream}: {exc!r}") from exc
        self._consumer_seq = 0
        return self._subscription

    async def _close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(NatsError):  # else the ephemeral consumer goes away once inactive
                await subscription.unsubscribe()

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Msg]:
        subscription = self._subscription or await self._open()
        try:
            messages = await subscription.fetch(batch=max_messages, timeout=timeout_s)
        except (TimeoutError, NatsTimeoutError):
            self.pending = 0  # nothing came in the wait: caught up
            self.read_wall_ns = time.time_ns()
            return []
        except NatsError as exc:
            log.warning("stream read failed; reading again from the last message", extra={"error": repr(exc)})
            await self._close()
            return []
        read_wall_ns = time.time_ns()
        taken: list[Msg] = []
        for message in messages:
            metadata = message.metadata
            if metadata.sequence.consumer != self._consumer_seq + 1:
                # Messages were lost on the way (e.g. a reconnect): start again right after the last one taken.
                log.warning("gap in the stream read; reading again", extra={"stream": self.stream})
                await self._close()
                break
            self._consumer_seq = metadata.sequence.consumer
            self.next_seq = metadata.sequence.stream + 1
            self.pending = metadata.num_pending
            self.read_wall_ns = read_wall_ns
            taken.append(message)
        return taken

    async def stop(self) -> None:
        await self._close()
