"""What the stream worker counts, as Prometheus metrics (served on ``streams.metrics_port``).

Labels are bounded: exchange and symbol through :data:`~market_ingestor.observability.SYMBOLS`, interval and
indicator names from the configuration, dead-letter reasons and table names from fixed sets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from market_ingestor.observability import tally

TRADES = tally("trade_process", "Trades processed by the kline agent", ("exchange",))
KLINES = tally("worker_klines", "Klines sent (closed, corrected and in-progress)", ("interval",))
INDICATORS = tally("worker_indicator_values", "Indicator values sent", ("name",))
INDICATOR_STALE = tally(
    "worker_indicator_stale_klines",
    "Closed klines the indicators ignored: corrections older than the klines they keep (max_lateness_ms)",
    ("interval",),
)
DEAD_LETTERS = Counter(
    "worker_dead_letters_total",
    "Trades sent to the dead-letter topic: undecodable, invalid (e.g. a NaN price) or too late for their window",
    ["exchange", "symbol", "reason"],
)
STALE_PARTITIONS = Counter(
    "worker_stale_partitions_total",
    "Input partitions whose local rows were found behind their committed input offset, and rebuilt from the changelog",
)
TABLE_ROWS = Gauge(
    "worker_table_rows", "Rows (instruments) in the tables of this worker's active partitions", ["table"]
)
