"""What the ingest side counts, as Prometheus metrics (served by issue 6's /metrics).

Labels are bounded: exchange (five values), event type (a handful) and symbol, which only takes the symbols an
operator configured (unknown symbols are rejected before anything is counted under their name).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("market_frames_total", "WebSocket frames received", ["exchange"])
EVENTS = Counter("market_events_total", "Normalized events produced", ["exchange", "symbol", "type"])
DEAD_LETTERS = Counter("market_dead_letters_total", "Frames that could not be normalized", ["exchange"])
SEQUENCE_GAPS = Counter(
    "market_sequence_gaps_total", "Missing trade ids or book sequence numbers", ["exchange", "symbol", "kind"]
)
BOOK_RESYNCS = Counter("market_book_resyncs_total", "Order books resynchronized from a fresh snapshot", ["exchange"])
RECONNECTS = Counter("market_reconnects_total", "WebSocket reconnections", ["exchange"])
CONNECTED = Gauge("market_connections", "Open WebSocket connections", ["exchange"])
PUBLISHED = Counter("trade_process_total", "Events published to the bus", ["topic"])
INGEST_LATENCY = Histogram(
    "ingest_latency_seconds",
    "Exchange event time to publish",
    ["exchange"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
QUEUE_DEPTH = Gauge("ingest_queue_depth", "Events waiting to be published")
