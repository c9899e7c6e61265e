"""Session fixtures: the real servers of the dev stack, reused when running, else started (and left running
for the next session; `market-ingestor dev down` stops them)."""

from __future__ import annotations

import pytest

from market_ingestor.devstack import StackInfo, ensure_stack


@pytest.fixture(scope="session")
def dev_stack() -> StackInfo:
    return ensure_stack()
