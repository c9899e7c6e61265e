"""The worker's memory with the kline state of 1,000 instruments x the six default intervals: under 200 MB RSS.

One worker process on the dev stack's Kafka with the default config (12 partitions, so 12 RocksDB stores per table;
the default indicators too), three trades per instrument in three consecutive minutes of event time;
``max_lateness_ms = 0``, so every window a later trade closes is expired from the state at once (except the last
one of each interval, kept for flat fills). Once every instrument's minute-1 kline has closed (it closes only when
the instrument's minute-2 trade arrives, so all 3,000 trades are in), the worker's resident memory must be under
200 MB, and every instrument's minute-1 kline must be there with its own trade.
That the state of one instrument stays small as windows expire is the pure tests' business (test_klines.py); how
the worker's memory grows under a sustained backlog (RocksDB memtables, fetch buffers) bench/klines.py reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key
from market_ingestor.bus.records import decode_events
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import BusConfig, KafkaConfig
from market_ingestor.model import Kline, Trade, encode

pytestmark = pytest.mark.kafka

INSTRUMENTS = 1000
LIMIT_MB = 200
MINUTE = 60_000_000_000
T0 = (1_700_000_000_000_000_000 // (60 * MINUTE)) * 60 * MINUTE  # an hour boundary, long ago: event time only


def trades() -> list[Trade]:
    """Three per instrument, at minutes 0, 1 and 2; each instrument with its own price."""
    out = []
    for minute in range(3):
        for n in range(INSTRUMENTS):
            ts = T0 + minute * MINUTE + 10_000_000_000 + n * 1_000_000
            price = Decimal(1000 + n) + Decimal(minute) / 100
            out.append(Trade("binance", f"M{n:04d}USDT", f"{n}-{minute}", price, Decimal("0.5"), "buy", ts, ts))
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def test_a_thousand_instruments_of_kline_state_fit_in_200_mb(dev_stack, tmp_path):
    prefix = f"m{uuid.uuid4().hex[:8]}."
    config = BusConfig(topic_prefix=prefix, kafka=KafkaConfig(bootstrap=dev_stack.kafka_bootstrap))
    bus = open_bus(config)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
    config_path = tmp_path / "market-ingestor.toml"
    config_path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\ntopic_prefix = "{prefix}"\n[bus.kafka]\n'
        f'bootstrap = "{dev_stack.kafka_bootstrap}"\n[streams]\napp_id = "{prefix.rstrip(".")}"\n'
        "max_lateness_ms = 0\nstandby_replicas = 0\n"
    )
    follower = bus.follower([prefix + Topics.KLINES])
    await follower.start()
    log = tmp_path / "worker.log"  # a file, not a pipe: nobody reads it while the worker runs
    with log.open("wb") as stderr:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_ingestor.cli.main", "--config", str(config_path), "worker",
            "--data-dir", str(tmp_path / "data"), stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    published = trades()
    closed: dict[str, Kline] = {}  # per symbol, its closed minute-1 kline
    try:
        publisher = bus.publisher()
        await publisher.start()
        for trade in published:
            await publisher.publish(prefix + Topics.TRADES, bus_key(trade), encode(trade))
        await publisher.stop()

        async def until_every_instrument_closed_minute_1() -> None:
            while len(closed) < INSTRUMENTS and worker.returncode is None:
                for delivery in await follower.fetch(max_records=5000, timeout_s=1.0):
                    for kline in decode_events(delivery.value):
                        assert isinstance(kline, Kline)
                        if kline.closed and kline.interval == "1m" and kline.open_time == T0 + MINUTE:
                            closed[kline.symbol] = kline

        with contextlib.suppress(TimeoutError):  # the message below says which are missing
            await asyncio.wait_for(until_every_instrument_closed_minute_1(), 60)
        if len(closed) < INSTRUMENTS:
            pytest.fail(f"{INSTRUMENTS - len(closed)} instruments never closed minute 1: {log.read_text()[-3000:]}")
        rss, peak = rss_mb(worker.pid)
    finally:
        if worker.returncode is None:
            worker.terminate()
            await asyncio.wait_for(worker.wait(), 60)
        await follower.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=dev_stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(prefix.rstrip("."))])
        finally:
            await admin.close()
    print(f"\nworker with {INSTRUMENTS} instruments x 6 intervals: VmRSS {rss:.0f} MB (peak {peak:.0f} MB)")
    assert rss < LIMIT_MB, f"the worker holds {rss:.0f} MB (peak {peak:.0f} MB), over {LIMIT_MB} MB"
    # Every instrument is there, with its own minute-1 trade: nothing lost or mixed up.
    minute_1 = {t.symbol: (1, t.price) for t in published if T0 + MINUTE <= t.ts < T0 + 2 * MINUTE}
    assert {symbol: (k.trade_count, k.close) for symbol, k in closed.items()} == minute_1
