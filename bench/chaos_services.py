"""The chaos run's moving parts: the services as child processes, the dev stack's servers as fault targets, and
the probes that tell when the pipeline has recovered from a fault (bench/chaos.py drives them).

Progress is read from the services' own output: Kafka offsets (what ingest published, what the worker and sink
groups committed, per partition; on NATS the same shape from stream sequences and checkpoints, chaos_bus.py) and
the rows in PostgreSQL; a group has *caught up* when its committed offsets
reach the end offsets of ``CAUGHT_UP_S`` earlier (the worker commits every ``streams.commit_interval_s``, so
lag is never 0 at an instant while trades flow; "everything that existed 2 s ago is consumed" is its lag back to
0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from market_ingestor.devstack.config import StackConfig
from market_ingestor.devstack.server import LocalServer
from market_ingestor.devstack.stack import stack_servers

CAUGHT_UP_S = 2.0
POLL_S = 0.25

# What is running for a run, and how to stop it at once: a run abandoned where its own cleanup cannot run (pytest's
# timeout raises in the event loop and leaves the run's coroutine pending) would leave its services behind, running
# into whatever comes next on the same dev stack (seen: a hung run's sink and Prometheus through later test runs).
_running: dict[int, tuple[str, Callable[[], object]]] = {}


def stop_abandoned() -> list[str]:
    """Stops everything a run started and did not stop (its services, its Prometheus); returns what it stopped.

    For a caller that outlives the run: the chaos test's teardown, after a pass, a failure or its timeout."""
    stopped = []
    for key, (name, stop) in list(_running.items()):
        _running.pop(key, None)
        stop()
        stopped.append(name)
    return stopped


def track(key: object, name: str, stop: Callable[[], object]) -> None:
    """Registers ``stop`` as the way to stop ``key`` (``name``) if its run is abandoned; :func:`untrack` it once
    stopped."""
    _running[id(key)] = (name, stop)


def untrack(key: object) -> None:
    _running.pop(id(key), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """One service as a child process; its output goes to ``{workdir}/{name}.{start}.log``."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name, self.argv, self.workdir = name, argv, workdir
        self.env = dict(env or {})
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.starts += 1
        with (self.workdir / f"{self.name}.{self.starts}.log").open("wb") as log:
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        track(self, self.name, self._abandon)

    def _abandon(self) -> None:
        if self.alive():
            self.resume()  # a paused service as well
            self.kill()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        untrack(self)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, wait_s: float = 90.0) -> int:
        """SIGTERM and the exit code; -999 for a service that did not exit within ``wait_s`` (then killed)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -999
        finally:
            untrack(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class StackServer:
    """A dev-stack server (PostgreSQL, the Kafka broker, the NATS server) stopped and started again as a fault: its
    own ``stop`` (``pg_ctl stop -m fast``; SIGTERM for the others) and ``ensure`` (start, wait until it serves
    clients)."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server

    @classmethod
    def of_stack(cls) -> dict[str, StackServer]:
        kafka, postgres, _, nats = stack_servers(StackConfig.from_env())
        return {"postgres": cls(postgres), "kafka": cls(kafka), "nats": cls(nats)}

    async def stop(self) -> None:
        if not await asyncio.to_thread(self.server.stop):
            raise RuntimeError(f"{self.server.name} was not running: the chaos run needs the dev stack's own")

    async def start(self) -> None:
        await asyncio.to_thread(self.server.ensure, 180.0)


Offsets = dict[tuple[str, int], int]  # (topic, partition) -> offset


class ProgressReader(Protocol):
    """Where the pipeline's progress is read: :class:`OffsetReader` on Kafka, chaos_bus.NatsOffsetReader on NATS."""

    async def read(self, topics: list[str], groups: list[str]) -> tuple[Offsets, dict[str, Offsets]] | None:
        """(end offsets of ``topics``, committed offsets per group on them); None while the bus does not answer."""

    async def close(self) -> None: ...


class OffsetReader:
    """End offsets of topics and committed offsets of groups, read with fresh clients after any failure (the
    broker is one of the fault targets)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                isolation_level="read_committed",
                request_timeout_ms=5000,
            )
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await _close(admin, consumer)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        await _close(admin, consumer)

    async def read(self, topics: list[str], groups: list[str]) -> tuple[Offsets, dict[str, Offsets]] | None:
        """(end offsets of ``topics``, committed offsets per group on them); None while Kafka does not answer."""
        try:
            return await asyncio.wait_for(self._read(topics, groups), timeout=10.0)
        except (KafkaError, OSError, TimeoutError):
            await self.close()
            return None

    async def _read(self, topics: list[str], groups: list[str]) -> tuple[Offsets, dict[str, Offsets]]:
        admin, consumer = await self._clients()
        partitions = [
            TopicPartition(described["topic"], p["partition"])
            for described in await admin.describe_topics(topics)
            if not described["error_code"]
            for p in described["partitions"]
        ]
        end = await consumer.end_offsets(partitions)
        committed: dict[str, Offsets] = {}
        for group in groups:
            listed = await admin.list_consumer_group_offsets(group)
            committed[group] = {(tp.topic, tp.partition): m.offset for tp, m in listed.items() if tp.topic in topics}
        return {(tp.topic, tp.partition): offset for tp, offset in end.items()}, committed


async def _close(admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None) -> None:
    for close in (consumer and consumer.stop, admin and admin.close):
        if close is not None:
            with contextlib.suppress(KafkaError, OSError):
                await close()


class OffsetHistory:
    """Samples offsets every ``POLL_S`` in the background (:meth:`run`); answers progress and catch-up questions."""

    def __init__(self, reader: ProgressReader, topics: dict[str, list[str]]) -> None:
        self.reader = reader
        self.topics = topics  # group -> the topics it consumes (and "" -> topics whose end offsets are watched)
        self.samples: deque[tuple[float, Offsets, dict[str, Offsets]]] = deque(maxlen=2000)

    async def run(self) -> None:
        all_topics = sorted({t for topics in self.topics.values() for t in topics})
        groups = [group for group in self.topics if group]
        while True:
            read = await self.reader.read(all_topics, groups)
            if read is not None:
                self.samples.append((time.monotonic(), *read))
            await asyncio.sleep(POLL_S)

    def _end_at(self, t: float) -> Offsets | None:
        found = None
        for at, end, _ in self.samples:
            if at > t:
                break
            found = end
        return found

    def _end_from(self, t: float) -> Offsets | None:
        """The end offsets of the first sample taken at ``t`` or later (none may have been taken while the broker
        was down)."""
        return next((end for at, end, _ in self.samples if at >= t), None)

    def published_since(self, t: float, topic: str) -> bool:
        """The topic's end offsets grew after ``t``."""
        before, latest = self._end_at(t), self.samples[-1][1] if self.samples else None
        if before is None or latest is None:
            return False
        return sum(o for (tp, _), o in latest.items() if tp == topic) > sum(
            o for (tp, _), o in before.items() if tp == topic
        )

    def committed_everywhere_since(self, t: float, group: str) -> bool:
        """Every partition of the group's topics that had records after ``t`` has a commit beyond its offset
        at ``t``: the whole group processes again."""
        before = [c for at, _, c in self.samples if at <= t]
        if not before or not self.samples or self.samples[-1][0] <= t:
            return False
        old, (_, end, new) = before[-1].get(group, {}), self.samples[-1]
        for tp in self._partitions(group, end):
            start = old.get(tp, 0)  # no commit yet: the group starts at the beginning
            if end[tp] > start and new.get(group, {}).get(tp, 0) <= start:
                return False
        return True

    def caught_up(self, group: str, since: float) -> bool:
        """The group's committed offsets reach, on every partition, the end offsets of ``CAUGHT_UP_S`` ago (of
        ``since``, if that is later: what was published while a fault lasted must be consumed)."""
        if not self.samples:
            return False
        at, _, committed = self.samples[-1]
        earlier = self._end_from(max(since, at - CAUGHT_UP_S))
        if earlier is None:
            return False
        own = committed.get(group, {})
        # One offset short counts: under exactly_once a partition's last offset is often a transaction marker,
        # which no consumer gets as a record to commit past.
        return all(own.get(tp, 0) >= earlier[tp] - 1 for tp in self._partitions(group, earlier))

    def _partitions(self, group: str, offsets: Offsets) -> list[tuple[str, int]]:
        return [tp for tp in offsets if tp[0] in self.topics[group]]


async def db_value(database_url: str, query: str) -> int | None:
    """One integer from the database, or None while it cannot be reached (PostgreSQL is a fault target)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=2.0)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        return int(await conn.fetchval(query, timeout=5.0))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    finally:
        await conn.close()


async def first_true(
    checks: Mapping[str, Callable[[], Awaitable[bool]]], since: float, timeout_s: float
) -> dict[str, float | None]:
    """Seconds from ``since`` until each check first held (None: not within ``timeout_s``), polling all."""
    found: dict[str, float | None] = {name: None for name in checks}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(v is None for v in found.values()):
        for name, check in checks.items():
            if found[name] is None and await check():
                found[name] = time.monotonic() - since
        await asyncio.sleep(POLL_S)
    return found
