"""Changing the configured kline intervals between two runs of the worker on the same RocksDB data and changelogs
(the real Kafka of the dev stack): kept intervals go on exactly, an added one starts with its first window after
the stored watermark and is complete from there, a removed one stops; nothing fails to load."""

from __future__ import annotations

import uuid

import pytest
from worker_harness import (
    KlineWatcher,
    assert_same_klines,
    make_trades,
    publish,
    start_worker,
    stop_worker,
    until_or_fail,
    worker_config,
)

from market_ingestor.config import BusConfig, KafkaConfig
from market_ingestor.streams.klines import KlineSettings, aggregate
from market_ingestor.windows import MINUTE_NS

pytestmark = pytest.mark.kafka


async def test_intervals_changed_between_runs_keep_kept_ones_and_start_added_ones_complete(dev_stack, tmp_path):
    prefix = f"i{uuid.uuid4().hex[:8]}."
    bus_config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap, partitions=3))
    trades = make_trades(6000, seed=7)
    first_half, second_half = trades[:3000], trades[3000:]
    expected = {
        (k.symbol, k.interval, k.open_time): k
        for k in aggregate(trades, KlineSettings(intervals=("1m", "2m", "5m"), grace_ms=2000))
    }
    (tmp_path / "a").mkdir()
    first_config = worker_config(tmp_path / "a", dev_stack.kafka_bootstrap, prefix, "at_least_once")  # 1m, 5m
    second_config = tmp_path / "b.toml"
    second_config.write_text(first_config.read_text().replace('intervals = ["1m", "5m"]', 'intervals = ["1m", "2m"]'))
    assert '"2m"' in second_config.read_text()
    watcher = KlineWatcher(bus_config)
    await watcher.follower.start()
    worker = None
    try:
        await publish(bus_config, first_half)
        worker = await start_worker(first_config, tmp_path / "data")
        last_ts = max(t.ts for t in first_half)
        processed = {key for key in expected if key[1] == "1m" and key[2] + MINUTE_NS <= last_ts}
        await until_or_fail(watcher, processed, worker)  # every first-half trade is in the state
        await stop_worker(worker)
        await publish(bus_config, second_half)
        worker = await start_worker(second_config, tmp_path / "data")
        # The watermark stored is at least the last trade's ts: 2m starts at the next 2m window or one later.
        earliest_begin = last_ts - last_ts % (2 * MINUTE_NS) + 2 * MINUTE_NS
        wanted = {
            key for key in expected if key[1] == "1m" or (key[1] == "2m" and key[2] >= earliest_begin + 2 * MINUTE_NS)
        }
        await until_or_fail(watcher, wanted, worker)
        await stop_worker(worker)
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
        await watcher.follower.stop()
    ones = {key: kline for key, kline in expected.items() if key[1] == "1m"}
    assert_same_klines({key: kline for key, kline in watcher.closed.items() if key[1] == "1m"}, ones)
    twos = {key: kline for key, kline in watcher.closed.items() if key[1] == "2m"}
    for symbol in {key[0] for key in expected}:
        begin = min(key[2] for key in twos if key[0] == symbol)
        assert begin in (earliest_begin, earliest_begin + 2 * MINUTE_NS), f"{symbol}: 2m began at {begin}"
        mine = {key: kline for key, kline in twos.items() if key[0] == symbol}
        wanted_twos = {key: k for key, k in expected.items() if key[:2] == (symbol, "2m") and key[2] >= begin}
        assert set(mine) == set(wanted_twos)
        assert_same_klines(mine, wanted_twos)
