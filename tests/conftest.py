"""Session fixtures: the real servers of the dev stack, reused when running, else started (and left running
for the next session; `market-ingestor dev down` stops them)."""

from __future__ import annotations

import os

import pytest

from market_ingestor.devstack import StackInfo, ensure_stack

# Services started by tests (in this process or as children, which inherit the environment) serve /metrics on a
# free port, not the fixed defaults: tests run side by side and often start several services of one kind.
for _setting in ("INGEST", "STREAMS", "SINK", "PUSH"):
    os.environ.setdefault(f"MARKET_INGESTOR__{_setting}__METRICS_PORT", "0")


@pytest.fixture(scope="session")
def dev_stack() -> StackInfo:
    return ensure_stack()
