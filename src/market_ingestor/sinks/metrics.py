"""What the sink counts, as Prometheus metrics. Labels are bounded: the topic (four values)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROWS = Counter("sink_rows_total", "Rows written to the database (re-deliveries included)", ["topic"])
DEAD_LETTERS = Counter("sink_dead_letters_total", "Records sent to market.deadletter instead of stored", ["topic"])
RETRIES = Counter("sink_write_retries_total", "Failed database writes that were retried", ["topic"])
WRITE_SECONDS = Histogram(
    "sink_write_seconds",
    "Duration of one batch's database transaction",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
