"""What every local Kafka-compatible broker of the dev stack shares: ports, URL and a real readiness probe.

``$KAFKA_BOOTSTRAP`` replaces the local broker. Which local broker runs (Apache Kafka or Tansu) is decided in
:mod:`market_ingestor.devstack.stack`; the kind that was launched is recorded so ``status`` and ``down``
describe the broker that actually runs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from market_ingestor.devstack.config import HOST
from market_ingestor.devstack.process import port_open
from market_ingestor.devstack.server import LocalServer, Status


class KafkaBroker(LocalServer):
    """A single-node broker on ``127.0.0.1:<kafka port>``."""

    name = "kafka"
    external_env = "KAFKA_BOOTSTRAP"
    url_key = "bootstrap"
    #: Whether this kind of local broker implements Kafka transactions (exactly-once needs them).
    local_transactions: ClassVar[bool] = True

    @property
    def port(self) -> int:
        return self.config.kafka_port

    @property
    def ports(self) -> list[int]:
        return [self.port, self.config.kafka_controller_port]

    def local_url(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def kind_file(self) -> Path:
        return self.home / "kind"

    def _record_kind(self) -> None:
        self.kind_file.write_text(self.local_kind + "\n")

    @property
    def supports_transactions(self) -> bool:
        # An external broker is assumed to be a full Kafka (or Redpanda), which has transactions.
        return self.kind == "external" or self.local_transactions

    def status(self) -> Status:
        return {**super().status(), "supports_transactions": self.supports_transactions}

    def _answers(self) -> bool:
        # The port opens before the broker has joined its own KRaft quorum; metadata listing a broker is the
        # first moment clients can really produce.
        return port_open(HOST, self.port) and broker_answers(self.local_url())


def recorded_kind(home: Path) -> str | None:
    """The kind of broker last launched in ``home``, if any."""
    try:
        return (home / "kind").read_text().strip() or None
    except OSError:
        return None


def broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if a metadata request to ``bootstrap`` returns at least one broker."""

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        except (TimeoutError, KafkaError, OSError):
            return False
        finally:
            await client.close()

    # A private loop in a worker thread: callers may be plain functions or already inside an event loop
    # (an async pytest fixture), where asyncio.run() would refuse to nest.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devstack-kafka-probe") as pool:
        return pool.submit(asyncio.run, probe()).result()
