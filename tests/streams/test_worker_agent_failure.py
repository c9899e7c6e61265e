"""An agent that raises stops the worker with exit code 1 (Faust alone would leave the process idle for good, its
partitions assigned to it), and the restarted worker loses nothing: on the real Kafka of the dev stack, with an
exception injected into the kline agent of a real worker process."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from worker_harness import (
    KlineWatcher,
    assert_same_indicators,
    assert_same_klines,
    expected_indicators,
    expected_klines,
    make_trades,
    publish,
    start_worker,
    stop_worker,
    until_or_fail,
    worker_config,
)

from market_ingestor.config import BusConfig, KafkaConfig

pytestmark = pytest.mark.kafka

# The worker command, with the kline agent's second batch raising: a bug or an unexpected failure mid-stream.
FAILING_WORKER = """
import sys
from market_ingestor.streams import app as streams_app
process, calls = streams_app.KlineAgent.process, []
async def failing(self, events):
    calls.append(1)
    if len(calls) == 2:
        raise RuntimeError("injected failure")
    return await process(self, events)
streams_app.KlineAgent.process = failing
from market_ingestor.cli.main import cli
sys.exit(cli())
"""


async def test_a_failing_agent_stops_the_worker_with_exit_1_and_a_restart_loses_nothing(dev_stack, tmp_path):
    prefix = f"f{uuid.uuid4().hex[:8]}."
    bus_config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    trades = make_trades(6000, seed=11)
    expected = expected_klines(trades)
    config_path = worker_config(tmp_path, dev_stack.kafka_bootstrap, prefix, "at_least_once")
    runner = tmp_path / "failing_worker.py"
    runner.write_text(FAILING_WORKER)
    watcher = KlineWatcher(bus_config)
    await watcher.follower.start()
    worker = None
    try:
        await publish(bus_config, trades)
        failing = await asyncio.create_subprocess_exec(
            sys.executable, str(runner), "--config", str(config_path), "worker", "--data-dir", str(tmp_path / "data"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(failing.communicate(), 90)
        assert failing.returncode == 1, stderr.decode()[-3000:]
        assert "agent klines failed: stopping the worker (exit 1)" in stderr.decode()
        assert "RuntimeError: injected failure" in stderr.decode()
        worker = await start_worker(config_path, tmp_path / "data")
        indicators = expected_indicators(expected)
        await until_or_fail(watcher, set(expected), worker, {key: set(values) for key, values in indicators.items()})
        await stop_worker(worker)
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
        await watcher.follower.stop()
    assert_same_klines(watcher.closed, expected)
    assert_same_indicators(watcher, indicators)
