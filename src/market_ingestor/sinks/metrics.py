"""What the sink counts, as Prometheus metrics (served on ``sink.metrics_port``). Labels are bounded: the table
and the topic (four values each)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROWS = Counter("db_insert_total", "Rows written to the database (re-deliveries included)", ["table"])
DEAD_LETTERS = Counter("sink_dead_letters_total", "Records sent to market.deadletter instead of stored", ["topic"])
RETRIES = Counter("sink_write_retries_total", "Failed database writes that were retried", ["topic"])
WRITE_SECONDS = Histogram(
    "sink_write_seconds",
    "Duration of one batch's database transaction",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "sink_batch_size",
    "Records per batch",
    ["topic"],
    buckets=(1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000),
)
FLUSH_SECONDS = Histogram(
    "sink_flush_seconds",
    "Duration of one batch from its first write attempt to stored (retries and dead letters included)",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
