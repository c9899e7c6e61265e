"""A real single-node Apache Kafka (KRaft, combined broker and controller) run from Maven-resolved jars."""

from __future__ import annotations

import base64
import importlib.resources
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from market_ingestor.devstack.config import HOST
from market_ingestor.devstack.kafka import KafkaBroker
from market_ingestor.devstack.kafka_dist import kafka_libs, kafka_version
from market_ingestor.devstack.process import run_tool, spawn_detached
from market_ingestor.devstack.server import Status
from market_ingestor.errors import DevStackError

_LOG4J_CONFIG = importlib.resources.files("market_ingestor.devstack").joinpath("kafka-log4j2.yaml")

_JVM_OPTIONS = [
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]


class ApacheKafka(KafkaBroker):
    program = "java"

    @property
    def local_kind(self) -> str:
        return "apache-kafka"

    @property
    def logs(self) -> list[Path]:
        # log4j2's broker log first; the JVM's own stdout catches what happens before log4j2 is up.
        return [self.home / "logs" / "server.log", self.home / "kafka.log"]

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def status(self) -> Status:
        status = super().status()
        if status["kind"] == self.local_kind:
            status["version"] = kafka_version()
        return status

    def _launch(self, timeout: float) -> int:
        libs = kafka_libs(kafka_version())
        properties = self.home / "server.properties"
        properties.write_text(self._server_properties())
        log4j = self.home / "log4j2.yaml"
        log4j.write_text(_LOG4J_CONFIG.read_text())
        java = _java_prefix(libs, log4j, self.home / "logs")
        if not (self.data_dir / "meta.properties").exists():
            run_tool(
                [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(properties)],
                what="formatting the Kafka storage",
                logfile=self.logs[1],
                timeout=timeout,
            )
        self._record_kind()
        return spawn_detached(
            [*java, *_JVM_OPTIONS, "kafka.Kafka", str(properties)],
            pidfile=self.pidfile,
            logfile=self.logs[1],
            cwd=self.home,
        )

    def _server_properties(self) -> str:
        broker = f"{HOST}:{self.config.kafka_port}"
        controller = f"{HOST}:{self.config.kafka_controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{controller}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{broker}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic must live with a single replica, or transactions and
            # consumer groups wait forever for replicas that will never exist.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests start a consumer and expect it to own partitions immediately.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "num.partitions": "4",
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())


def _java_prefix(libs: Path, log4j: Path, log_dir: Path) -> list[str]:
    return [
        _java_binary(),
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={log_dir}",
        "-cp",
        f"{libs}/*",
    ]


def _java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise DevStackError("java is not installed (Kafka 4 needs Java 17+): apt-get install openjdk-17-jre-headless")
    return found


def _cluster_id(draw: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """16 random bytes in URL-safe base64 without padding, as Kafka's own ids, and as Kafka's ``Uuid.randomUuid``
    never one that starts with "-": ``kafka-storage format -t -...`` takes it for an option and refuses (1 in 64
    ids; it failed a test run)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(draw()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
