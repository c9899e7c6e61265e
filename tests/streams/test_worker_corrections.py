"""The stream worker on the real Kafka (Faust) and NATS of the dev stack, with trades arriving minutes late: they
correct klines several intervals older than the latest, and the indicator values the worker emitted last for every
kline are those of the final (corrected) klines."""

from __future__ import annotations

import contextlib
import random
import uuid

import pytest
from worker_harness import (
    KlineWatcher,
    bus_config,
    expected_indicators,
    expected_klines,
    make_trades,
    publish,
    start_worker,
    stop_worker,
    until_or_fail,
    worker_config,
)

from market_ingestor.model import Trade
from market_ingestor.streams.klines import KlineSettings, aggregate

MINUTE_NS = 60 * 10**9


def late_arrivals(trades: list[Trade], seed: int) -> list[Trade]:
    """One trade in 15 arrives 2 to 6 minutes of event time late (the default max_lateness is 10 minutes)."""
    rng = random.Random(seed)
    delays = [rng.randint(2 * MINUTE_NS, 6 * MINUTE_NS) if rng.random() < 1 / 15 else 0 for _ in trades]
    order = sorted(range(len(trades)), key=lambda n: (trades[n].ts + delays[n], n))
    return [trades[n] for n in order]


def deepest_correction(trades: list[Trade]) -> int:
    """How many later 1m klines had closed before the deepest correction (the pure aggregator's order)."""
    deepest, seen = 0, {}
    for kline in aggregate(trades, KlineSettings(intervals=("1m", "5m"))):
        if kline.closed and kline.interval == "1m":
            later = seen.setdefault(kline.symbol, set())
            deepest = max(deepest, sum(1 for t in later if t > kline.open_time))
            later.add(kline.open_time)
    return deepest


@pytest.mark.parametrize(
    "bus", [pytest.param("kafka", marks=pytest.mark.kafka), pytest.param("nats", marks=pytest.mark.nats)]
)
async def test_indicators_follow_corrections_of_older_klines(dev_stack, tmp_path, bus):
    prefix = f"c{uuid.uuid4().hex[:8]}."
    config = bus_config(dev_stack, prefix, bus)
    trades = late_arrivals(make_trades(1500, seed=8), seed=8)
    assert deepest_correction(trades) >= 2  # corrections reach klines older than the latest, as intended
    expected = expected_klines(trades)
    indicators = expected_indicators(expected)
    want = {key: {t: v.values for t, v in values.items()} for key, values in indicators.items()}
    nats_url = dev_stack.nats_url if bus == "nats" else None
    config_path = worker_config(tmp_path, dev_stack.kafka_bootstrap, prefix, "at_least_once", nats_url=nats_url)
    watcher = KlineWatcher(config)

    def latest() -> dict:  # type: ignore[type-arg]
        return {key: {t: v.values for t, v in watcher.indicators.get(key, {}).items()} for key in want}

    await watcher.start()
    try:
        await publish(config, trades)
        worker = await start_worker(config_path, tmp_path / "data")
        await until_or_fail(watcher, set(expected), worker, {key: set(values) for key, values in want.items()})
        with contextlib.suppress(TimeoutError):  # corrected values may still be on their way: wait, then compare
            await watcher.until(lambda: latest() == want, timeout_s=60)
        await stop_worker(worker)
    finally:
        await watcher.follower.stop()
    for key, values in want.items():
        assert latest()[key] == values, watcher.series(key)
    revised = [v for values in watcher.indicators.values() for v in values.values() if v.revision > 0]
    assert revised, "no indicator value was revised"
