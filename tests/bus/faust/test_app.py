"""The worker's event-loop handler of errors nobody took (bus/faust/app.py)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from aiokafka.errors import ProducerFenced

from market_ingestor.bus.faust.app import quiet_fenced_producers


async def _leave_unretrieved(exc: BaseException) -> None:
    future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    del future
    gc.collect()  # asyncio reports an unretrieved exception when the future is collected


@pytest.mark.parametrize(
    ("exc", "level"), [(ProducerFenced(), logging.INFO), (RuntimeError("a real bug"), logging.ERROR)]
)
async def test_a_fence_left_in_a_dropped_producers_future_is_info_anything_else_stays_an_error(
    exc: BaseException, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    saved = loop.get_exception_handler()
    loop.set_exception_handler(quiet_fenced_producers)
    try:
        with caplog.at_level(logging.INFO):
            await _leave_unretrieved(exc)
    finally:
        loop.set_exception_handler(saved)
    reports = [r for r in caplog.records if "not taken" in r.getMessage() or "never retrieved" in r.getMessage()]
    assert [r.levelno for r in reports] == [level]
