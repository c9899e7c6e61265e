"""``up``'s console (cli/status.py): the status line from the services' /metrics, and which log lines show."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from market_ingestor.cli.status import ConsoleFormatter, Sample, console_line, status_line, totals
from market_ingestor.ingestor import metrics as ingest_metrics


def exposition(build) -> str:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    build(registry)
    return generate_latest(registry).decode()


def sample(at_s: float, trades: int, klines: int, rows: int, lag: tuple[int, int], clients: int) -> Sample:
    def ingest(registry: CollectorRegistry) -> None:
        events = Counter("market_events", "", ["exchange", "symbol", "type"], registry=registry)
        events.labels("binance", "BTCUSDT", "Trade").inc(trades)
        events.labels("binance", "BTCUSDT", "Quote").inc(1000)  # not a trade: not counted

    def worker(registry: CollectorRegistry) -> None:
        Counter("worker_klines", "", ["interval"], registry=registry).labels("1m").inc(klines)
        Gauge("consumer_lag", "", ["group", "topic", "partition"], registry=registry).labels("w", "t", "0").set(lag[0])

    def sink(registry: CollectorRegistry) -> None:
        Counter("db_insert", "", ["table"], registry=registry).labels("market_trades").inc(rows)
        Gauge("consumer_lag", "", ["group", "topic", "partition"], registry=registry).labels("s", "t", "0").set(lag[1])

    def push(registry: CollectorRegistry) -> None:
        Gauge("ws_clients", "", registry=registry).set(clients)

    texts = {"ingest": ingest, "worker": worker, "sink": sink, "push": push}
    return Sample(at_s, {name: totals(exposition(build)) for name, build in texts.items()})


def test_the_status_line_shows_rates_totals_lag_and_clients():
    first = sample(100.0, trades=1000, klines=50, rows=900, lag=(3, 4), clients=2)
    assert status_line(None, first) == "trades - in | klines - | rows stored 900 | lag 7 | push clients 2"
    second = sample(105.0, trades=2050, klines=100, rows=12345, lag=(0, 1), clients=3)
    assert status_line(first, second) == "trades 210/s in | klines 10/s | rows stored 12,345 | lag 1 | push clients 3"


def test_a_service_that_does_not_answer_shows_a_dash():
    only_ingest = Sample(5.0, {"ingest": sample(0, 10, 0, 0, (0, 0), 0).values["ingest"]})
    assert status_line(None, only_ingest) == "trades - in | klines - | rows stored - | lag - | push clients -"


def test_the_ingest_trade_count_is_read_under_the_name_and_label_ingest_exposes():
    ingest_metrics.EVENTS.counts[("binance", "BTCUSDT", "Trade")] += 0  # the label the connector sets
    found = totals(exposition(lambda registry: registry.register(ingest_metrics.EVENTS)))
    assert any(labels.get("type") == "Trade" for labels, _ in found["market_events_total"])


def test_only_warnings_and_errors_reach_the_console_on_one_line():
    info = '{"ts":"t","level":"INFO","logger":"faust.worker","event":"[^Worker]: Starting..."}'
    warning = '{"ts":"t","level":"WARNING","logger":"x","event":"database write failed, retrying","attempt":2}'
    error = (
        '{"ts":"t","level":"ERROR","logger":"x","event":"boom",'
        '"exc":"Traceback (most recent call last):\\n  ...\\nValueError: bad"}'
    )
    routine = '{"level":"WARNING","logger":"aiokafka","event":"Heartbeat failed for group g because it is rebalancing"}'
    assert console_line("worker", info) is None
    assert console_line("sink", routine) is None
    assert console_line("sink", warning) == "sink: WARNING database write failed, retrying attempt=2"
    assert console_line("worker", error) == "worker: ERROR boom exc=ValueError: bad"
    assert console_line("api", "level=WARNING event=slow") == "api: level=WARNING event=slow"
    assert console_line("push", "push gateway listening on ws://0.0.0.0:8765/") is None  # in its log file only


def test_the_in_process_console_formatter_uses_the_same_form():
    record = logging.LogRecord("market_ingestor.ingestor", logging.WARNING, "f", 1, "connection lost", (), None)
    record.exchange = "okx"
    assert ConsoleFormatter("ingest").format(record) == "ingest: WARNING connection lost exchange=okx"
