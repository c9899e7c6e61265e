"""The worker serves /metrics and /healthz over HTTP: trades processed, dead letters, klines sent, the lag of each
partition it consumes and the rows of its tables follow what was published."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from worker_harness import SYMBOLS, bus_config, make_trades, publish, start_worker, stop_worker, worker_config

from market_ingestor.bus import open_bus
from market_ingestor.bus.keys import bus_key
from market_ingestor.bus.topics import Topics
from market_ingestor.model import encode
from metrics_helpers import Scrape, answering, free_port, healthz, scrape, until


@pytest.mark.parametrize(
    "bus", [pytest.param("kafka", marks=pytest.mark.kafka), pytest.param("nats", marks=pytest.mark.nats)]
)
async def test_worker_metrics_follow_the_trades_it_processed(dev_stack, tmp_path, monkeypatch, bus):
    prefix = f"w{uuid.uuid4().hex[:8]}."
    config = bus_config(dev_stack, prefix, bus)
    trades = make_trades(600, seed=11)
    await publish(config, trades)
    publisher = open_bus(config).publisher()
    await publisher.start()
    await publisher.publish(prefix + Topics.TRADES, "binance.AAAUSDT", b"not a trade")
    await publisher.flush()
    # One record with a bad event between two good ones: the good ones count, the bad one is dead-lettered.
    late = make_trades(2, seed=12)
    await publisher.publish(prefix + Topics.TRADES, bus_key(late[0]), encode(late[0]))
    await publisher.publish(prefix + Topics.TRADES, bus_key(late[0]), b'{"type":"trade","exchange":"binance"}')
    await publisher.publish(
        prefix + Topics.TRADES, bus_key(late[0]), encode(msgspec.structs.replace(late[1], symbol=late[0].symbol))
    )
    await publisher.stop()

    port = free_port()
    monkeypatch.setenv("MARKET_INGESTOR__STREAMS__METRICS_PORT", str(port))
    monkeypatch.setenv("MARKET_INGESTOR__METRICS__SAMPLE_INTERVAL_S", "0.2")
    nats_url = dev_stack.nats_url if bus == "nats" else None
    config_path = worker_config(tmp_path, dev_stack.kafka_bootstrap, prefix, "at_least_once", nats_url=nats_url)
    partitions = {"0", "1", "2"} if bus == "kafka" else {"0"}  # NATS: one stream read in order
    worker = await start_worker(config_path, tmp_path / "data")
    trades_topic = prefix + Topics.TRADES

    def died() -> str | None:
        return None if worker.returncode is None else f"exit code {worker.returncode}"

    async def caught_up() -> bool:
        got = await scrape(port)
        lag = got.matching("consumer_lag", topic=trades_topic)
        return (
            got.value("trade_process_total", exchange="binance") == len(trades) + 2
            and len(lag) == len(partitions)
            and sum(sample.value for sample in lag) == 0
            and got.value("worker_table_rows", table="kline-state") == len(SYMBOLS)
            and got.value("worker_dead_letters_total", exchange="other", symbol="other", reason="undecodable") == 2
        )

    try:
        await until(lambda: answering(port), "/healthz answers 200", timeout_s=90, alive=died)
        wanted = "all trades processed, the bad ones dead-lettered, no lag, a row per symbol"
        await until(caught_up, wanted, timeout_s=90, alive=died)
        got: Scrape = await scrape(port)
        assert {sample.labels["partition"] for sample in got.matching("consumer_lag", topic=trades_topic)} == partitions
        assert got.matching("consumer_lag", group=prefix.rstrip("."), topic=prefix + Topics.KLINES)  # indicators
        assert got.value("worker_dead_letters_total", exchange="other", symbol="other", reason="undecodable") == 2
        assert got.value("worker_klines_total", interval="1m") > 0 and got.value("worker_klines_total") > 0
        status, health = await healthz(port)
        owned = health["partitions"] > 0 if bus == "kafka" else health["shards"] == [0, 1, 2, 3]
        assert status == 200 and health["state"] == "running" and owned
        await stop_worker(worker)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
