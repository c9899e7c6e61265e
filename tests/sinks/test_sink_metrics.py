"""The sink serves /metrics and /healthz over HTTP: ``db_insert_total`` equals the rows it wrote, every batch is in
the batch-size and flush-duration histograms, and on Kafka the lag of its partitions drops to zero."""

from __future__ import annotations

import msgspec
import pytest
from sink_helpers import Stack, at_least, database, db, make_trades, sinks, start_sink, trade_count, until

from market_ingestor.bus.topics import Topics
from market_ingestor.config import BatchConfig
from metrics_helpers import answering, free_port, healthz, scrape

pytestmark = [pytest.mark.kafka, pytest.mark.nats, pytest.mark.postgres]
__all__ = ["database", "db", "sinks"]  # fixtures

COUNT = 3_000


@pytest.mark.parametrize("kind", ["kafka", "nats"])
async def test_sink_metrics_count_the_rows_written(dev_stack, database, db, tmp_path, sinks, monkeypatch, kind):
    port = free_port()
    monkeypatch.setenv("MARKET_INGESTOR__SINK__METRICS_PORT", str(port))
    monkeypatch.setenv("MARKET_INGESTOR__METRICS__SAMPLE_INTERVAL_S", "0.2")
    stack = Stack(dev_stack, database, tmp_path, kind)
    stack.configure(batch_size=500)
    # Records of at most 100 trades: batches of 500 rows hold whole records, never more than 500 rows.
    stack.bus_config = msgspec.structs.replace(stack.bus_config, batch=BatchConfig(max_events=100))
    await stack.ensure_topics()
    trades = make_trades(COUNT, seed=9)
    sink = await start_sink(stack, sinks)
    await until(lambda: answering(port), sink, "/healthz answers 200")
    await stack.publish(trades)
    await until(lambda: at_least(db, COUNT), sink, f"{COUNT} trades stored")
    assert await trade_count(db) == COUNT
    topic = stack.topic(Topics.TRADES)

    async def all_counted() -> bool:
        got = await scrape(port)
        if got.value("sink_batch_size_sum", topic=topic) < COUNT:
            return False  # the last batch's transaction is done, its observation a moment later
        lag = got.matching("consumer_lag", topic=topic)
        return kind == "nats" or (len(lag) == 3 and sum(sample.value for sample in lag) == 0)

    await until(all_counted, sink, "every batch observed (and no lag left on Kafka)")
    got = await scrape(port)
    assert got.value("db_insert_total", table="market_trades") == COUNT
    assert got.value("sink_batch_size_sum", topic=topic) == COUNT
    batches = got.value("sink_batch_size_count", topic=topic)
    assert COUNT / 500 <= batches <= COUNT  # batches of at most 500 rows (of whole records)
    assert got.value("sink_flush_seconds_count", topic=topic) == batches
    assert got.value("sink_write_seconds_count") >= batches
    assert got.has("sink_dead_letters_total") and got.value("sink_dead_letters_total") == 0
    status, health = await healthz(port)
    assert status == 200 and health["state"] == "running" and health["database"] == "ok"
    assert await sink.stop() == 0, sink.log()[-3000:]
