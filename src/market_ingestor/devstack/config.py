"""Where the dev stack keeps its state and which loopback ports it uses.

Ports are fixed so that a later ``up``, ``status`` or test session finds a running stack again; a second,
independent stack (e.g. a test of ``down``) shifts all of them with ``MARKET_INGESTOR_DEVSTACK_PORT_OFFSET``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from market_ingestor.errors import DevStackError

ENV_STATE_DIR = "MARKET_INGESTOR_DEVSTACK_DIR"
ENV_PORT_OFFSET = "MARKET_INGESTOR_DEVSTACK_PORT_OFFSET"

HOST = "127.0.0.1"

KAFKA_PORT = 19092
KAFKA_CONTROLLER_PORT = 19093
POSTGRES_PORT = 15432
TIMESCALEDB_PORT = 15433
NATS_PORT = 14222
NATS_MONITOR_PORT = 18222
PROMETHEUS_PORT = 19090


@dataclass(frozen=True)
class StackConfig:
    """The state directory and port offset one dev stack runs with."""

    state_dir: Path
    port_offset: int = 0

    @classmethod
    def from_env(cls, state_dir: str | Path | None = None, port_offset: int | None = None) -> StackConfig:
        """Explicit arguments win over the environment, which wins over ``./.devstack`` and offset 0."""
        directory = Path(state_dir or os.environ.get(ENV_STATE_DIR) or ".devstack")
        if port_offset is None:
            port_offset = _int_env(ENV_PORT_OFFSET, 0)
        config = cls(state_dir=directory.expanduser().resolve(), port_offset=port_offset)
        config.check_ports()
        return config

    def ports(self) -> dict[str, int]:
        return {
            "kafka": self.kafka_port,
            "kafka controller": self.kafka_controller_port,
            "postgres": self.postgres_port,
            "timescaledb": self.timescaledb_port,
            "nats": self.nats_port,
            "nats monitor": self.nats_monitor_port,
            "prometheus": self.prometheus_port,
        }

    def check_ports(self) -> None:
        """Reject offsets that leave the port range or land one server on another's default port."""
        defaults = StackConfig(self.state_dir).ports()
        for server, port in self.ports().items():
            if not 0 < port < 65536:
                raise DevStackError(f"{ENV_PORT_OFFSET}={self.port_offset} puts {server} on invalid port {port}")
            clash = [other for other, default in defaults.items() if default == port and other != server]
            if clash:
                raise DevStackError(
                    f"{ENV_PORT_OFFSET}={self.port_offset} puts {server} on port {port}, the default port of "
                    f"{clash[0]}; pick another offset (e.g. 1000)"
                )

    def service_dir(self, name: str) -> Path:
        return self.state_dir / name

    @property
    def kafka_port(self) -> int:
        return KAFKA_PORT + self.port_offset

    @property
    def kafka_controller_port(self) -> int:
        return KAFKA_CONTROLLER_PORT + self.port_offset

    @property
    def postgres_port(self) -> int:
        return POSTGRES_PORT + self.port_offset

    @property
    def timescaledb_port(self) -> int:
        return TIMESCALEDB_PORT + self.port_offset

    @property
    def nats_port(self) -> int:
        return NATS_PORT + self.port_offset

    @property
    def nats_monitor_port(self) -> int:
        return NATS_MONITOR_PORT + self.port_offset

    @property
    def prometheus_port(self) -> int:
        return PROMETHEUS_PORT + self.port_offset


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DevStackError(f"{name}={raw!r} is not an integer") from None
