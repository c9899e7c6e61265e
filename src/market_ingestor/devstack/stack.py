"""The whole dev stack (Kafka, PostgreSQL, NATS; Prometheus on request) as one unit: ensure it runs, stop it, report
on it."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from market_ingestor.devstack.apache_kafka import ApacheKafka
from market_ingestor.devstack.config import StackConfig
from market_ingestor.devstack.kafka import KafkaBroker, recorded_kind
from market_ingestor.devstack.nats import NatsServer
from market_ingestor.devstack.postgres import PostgresServer, TimescaleServer
from market_ingestor.devstack.prometheus import PrometheusServer
from market_ingestor.devstack.scrape import ScrapeJob
from market_ingestor.devstack.server import LocalServer, Status
from market_ingestor.devstack.tansu import TansuBroker
from market_ingestor.errors import DevStackError

logger = logging.getLogger(__name__)

#: Force the local broker kind ("apache-kafka" or "tansu") instead of picking by the installed tools.
ENV_KAFKA_KIND = "MARKET_INGESTOR_KAFKA_KIND"

_KAFKA_KINDS: dict[str, type[KafkaBroker]] = {"apache-kafka": ApacheKafka, "tansu": TansuBroker}

T = TypeVar("T")


@dataclass(frozen=True)
class StackInfo:
    """How to reach the running dev stack."""

    kafka_bootstrap: str
    kafka_kind: str  # "apache-kafka", "tansu" or "external"
    database_url: str
    nats_url: str
    supports_transactions: bool
    #: Servers this call started (empty when everything was reused or external).
    started: tuple[str, ...] = ()
    #: A PostgreSQL server that preloads TimescaleDB, or None (then ``timescaledb_missing`` says why).
    timescaledb_url: str | None = None
    timescaledb_missing: str = ""
    #: Prometheus's URL when it was asked for (``scrape_jobs``), else None.
    prometheus_url: str | None = None

    def env(self) -> dict[str, str]:
        """The environment variables the rest of the project reads its endpoints from."""
        return {"KAFKA_BOOTSTRAP": self.kafka_bootstrap, "DATABASE_URL": self.database_url, "NATS_URL": self.nats_url}


def ensure_stack(
    state_dir: str | Path | None = None,
    *,
    port_offset: int | None = None,
    timeout: float = 120.0,
    scrape_jobs: Sequence[ScrapeJob] | None = None,
) -> StackInfo:
    """Reuse the running dev stack in ``state_dir`` or start what is missing; servers keep running after.

    ``state_dir`` and ``port_offset`` default to ``$MARKET_INGESTOR_DEVSTACK_DIR`` (else ``./.devstack``) and
    ``$MARKET_INGESTOR_DEVSTACK_PORT_OFFSET`` (else 0). ``timeout`` bounds each server's startup, not the
    one-time Maven download of Kafka. With ``scrape_jobs`` (:func:`.scrape.pipeline_jobs`) Prometheus runs too,
    scraping them. Raises DevStackError with the failing server's log tail.
    """
    config = StackConfig.from_env(state_dir, port_offset)
    kafka, postgres, timescale, nats = core = stack_servers(config)
    prometheus = None if scrape_jobs is None else PrometheusServer(config, scrape_jobs)
    servers: tuple[LocalServer, ...] = core if prometheus is None else (*core, prometheus)
    with _locked(config):
        # Independent servers: start them side by side so a warm start costs the slowest one, not the sum.
        started = _each(servers, lambda server: server.ensure(timeout))
    missing = timescale.unavailable()
    return StackInfo(
        kafka_bootstrap=kafka.url(),
        kafka_kind=kafka.kind,
        database_url=postgres.url(),
        nats_url=nats.url(),
        supports_transactions=kafka.supports_transactions,
        started=tuple(server.name for server, did_start in zip(servers, started, strict=True) if did_start),
        timescaledb_url=timescale.url() if missing is None else None,
        timescaledb_missing=missing or "",
        prometheus_url=None if prometheus is None else prometheus.url(),
    )


def stop_stack(
    state_dir: str | Path | None = None, *, port_offset: int | None = None, purge: bool = False
) -> list[str]:
    """Stop every server this stack started and verify they are gone; return the names that were running.

    External servers (given by environment URLs) are never touched. ``purge`` also deletes the state dir
    (data, logs); the cached Kafka jars stay.
    """
    config = StackConfig.from_env(state_dir, port_offset)
    if not config.state_dir.is_dir():
        return []
    servers = (*stack_servers(config), PrometheusServer(config))
    with _locked(config):
        stopped = _each(servers, lambda server: server.stop())
        if purge:
            shutil.rmtree(config.state_dir, ignore_errors=True)
    return [server.name for server, did_stop in zip(servers, stopped, strict=True) if did_stop]


def stack_status(state_dir: str | Path | None = None, *, port_offset: int | None = None) -> dict[str, Status]:
    """Per server: connection string, kind, whether it runs, pid and log path (TimescaleDB: or why it cannot).
    Prometheus is listed too, running only if some ``dev up --with prometheus`` started it."""
    config = StackConfig.from_env(state_dir, port_offset)
    return {server.name: server.status() for server in (*stack_servers(config), PrometheusServer(config))}


def stack_servers(config: StackConfig) -> tuple[KafkaBroker, PostgresServer, TimescaleServer, NatsServer]:
    return select_kafka(config), PostgresServer(config), TimescaleServer(config), NatsServer(config)


def select_kafka(config: StackConfig) -> KafkaBroker:
    """The broker kind forced by the environment, else the running one, else the best the machine can run."""
    kind = os.environ.get(ENV_KAFKA_KIND) or _running_kafka_kind(config) or _best_kafka_kind()
    try:
        return _KAFKA_KINDS[kind](config)
    except KeyError:
        raise DevStackError(f"{ENV_KAFKA_KIND}={kind!r}: expected one of {sorted(_KAFKA_KINDS)}") from None


def _running_kafka_kind(config: StackConfig) -> str | None:
    kind = recorded_kind(config.service_dir(KafkaBroker.name))
    broker = _KAFKA_KINDS.get(kind or "")
    return kind if broker is not None and broker(config).live_pid() is not None else None


def _best_kafka_kind() -> str:
    if shutil.which("java") and shutil.which("mvn"):
        return "apache-kafka"
    logger.warning("java and mvn not both found: falling back to the in-memory Tansu broker (no transactions)")
    return "tansu"


def _each(servers: tuple[LocalServer, ...], action: Callable[[LocalServer], T]) -> list[T]:
    with ThreadPoolExecutor(max_workers=len(servers), thread_name_prefix="devstack") as pool:
        futures = [pool.submit(action, server) for server in servers]
    errors = [error for error in (future.exception() for future in futures) if error is not None]
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DevStackError("\n\n".join(str(error) for error in errors)) from errors[0]
    return [future.result() for future in futures]


@contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    # Several test sessions or engineers may run `up`/`down` on the same stack dir at once: serialize them
    # so nobody starts a second server on a port that is still coming up.
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with (config.state_dir / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another dev-stack command on %s", config.state_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
