"""The life cycle every dev-stack server shares: reuse or start, report, stop.

A concrete server says how to launch itself and how to tell that it answers; this base class owns the
pidfile, the "external URL from the environment" escape hatch, idempotent ``ensure`` and verified ``stop``.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from market_ingestor.devstack.config import HOST, StackConfig
from market_ingestor.devstack.process import fail, pid_alive, port_open, read_pid, runs_program, terminate, wait_until

logger = logging.getLogger(__name__)

Status = dict[str, object]


class LocalServer(ABC):
    """One server of the dev stack, either run locally from ``config.state_dir`` or given by an env URL."""

    name: ClassVar[str]
    #: Environment variable that points at an already running server and disables the local one.
    external_env: ClassVar[str]
    #: Key of the connection string in ``status()`` (Kafka calls it a bootstrap, the others a URL).
    url_key: ClassVar[str] = "url"
    #: Part of the server executable's file name: tells our pid from an unrelated process that reuses it.
    program: ClassVar[str]
    #: Seconds a SIGTERMed server gets to shut down cleanly before SIGKILL.
    stop_grace_s: ClassVar[float] = 15.0

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.service_dir(self.name)

    # -- what a concrete server provides -----------------------------------------------------------------

    @property
    @abstractmethod
    def port(self) -> int:
        """The client port of the local server."""

    @property
    @abstractmethod
    def local_kind(self) -> str:
        """What runs locally, for status output (e.g. "apache-kafka")."""

    @abstractmethod
    def local_url(self) -> str:
        """How clients reach the local server."""

    @abstractmethod
    def _launch(self, timeout: float) -> int:
        """Start the server (prepare its files first if needed) and return its pid."""

    @property
    def ports(self) -> list[int]:
        """Every port the local server listens on."""
        return [self.port]

    def _answers(self) -> bool:
        """Whether the server serves clients; stricter than an open port where a server needs that."""
        return port_open(HOST, self.port)

    # -- shared life cycle -------------------------------------------------------------------------------

    @property
    def pidfile(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def logs(self) -> list[Path]:
        return [self.home / f"{self.name}.log"]

    @property
    def external_url(self) -> str | None:
        return os.environ.get(self.external_env) or None

    @property
    def kind(self) -> str:
        return "external" if self.external_url else self.local_kind

    def url(self) -> str:
        return self.external_url or self.local_url()

    def live_pid(self) -> int | None:
        """The pid in our pidfile if that process is alive and runs our server's program."""
        pid = read_pid(self.pidfile)
        if pid is None or not pid_alive(pid) or not runs_program(pid, self.program):
            return None
        return pid

    def running_pid(self) -> int | None:
        """The pid of our local server if it is alive and its port accepts connections."""
        pid = self.live_pid()
        return pid if pid is not None and port_open(HOST, self.port) else None

    def ensure(self, timeout: float = 120.0) -> bool:
        """Make the server available; True if this call started it, False if it was external or running."""
        if self.external_url:
            logger.info("%s: using %s from $%s", self.name, self.external_url, self.external_env)
            return False
        if self.running_pid() is not None:
            logger.info("%s: reusing the running server at %s", self.name, self.local_url())
            return False
        self._stop_leftover()
        self.home.mkdir(parents=True, exist_ok=True)
        self._require_free_ports()
        pid = self._launch(timeout)
        wait_until(self._answers, what=self.name, timeout=timeout, pid=pid, logs=self.logs)
        logger.info("%s: started pid %d at %s", self.name, pid, self.local_url())
        return True

    def stop(self) -> bool:
        """Stop our local server and make sure its process is gone; True if there was one."""
        pid = self.live_pid()
        if pid is None:
            return False
        logger.info("%s: stopping pid %d", self.name, pid)
        self._shutdown(pid)
        return True

    def _shutdown(self, pid: int) -> None:
        terminate(pid, grace_s=self.stop_grace_s)

    def status(self) -> Status:
        """Connection string, kind and liveness, as shown by ``dev status``."""
        if self.external_url:
            host, port = _endpoint(self.external_url)
            return {self.url_key: self.external_url, "kind": "external", "running": port_open(host, port)}
        pid = self.running_pid()
        return {
            self.url_key: self.local_url(),
            "kind": self.local_kind,
            "running": pid is not None,
            "pid": pid,
            "log": str(self.logs[0]),
        }

    def _stop_leftover(self) -> None:
        # A pid that lives but does not answer is a hung or half-started server of ours: replace it.
        pid = self.live_pid()
        if pid is not None:
            logger.warning("%s: pid %d is alive but not answering; restarting it", self.name, pid)
            self._shutdown(pid)

    def _require_free_ports(self) -> None:
        taken = [port for port in self.ports if port_open(HOST, port)]
        if taken:
            raise fail(
                f"{self.name}: port {taken[0]} is taken by a process this dev stack did not start "
                f"(state dir {self.config.state_dir}); stop it, use another MARKET_INGESTOR_DEVSTACK_PORT_OFFSET, "
                f"or point ${self.external_env} at it"
            )


def _endpoint(url: str) -> tuple[str, int]:
    """Host and port of the first server in a URL or a Kafka bootstrap list; port 0 if none is given."""
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"tcp://{first}")
    try:
        port = parts.port or 0
    except ValueError:
        port = 0
    return parts.hostname or HOST, port
