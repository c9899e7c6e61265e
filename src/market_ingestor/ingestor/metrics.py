"""What the ingest side counts, as Prometheus metrics (served on ``ingest.metrics_port``).

Labels are bounded: exchange (the registry), event type (a handful), topic, and symbol through
:data:`~market_ingestor.observability.SYMBOLS` (the configured symbols, at most ``metrics.max_symbols``, the
rest under ``other``). Reconnects and unparseable frames are per exchange: a connection carries many symbols,
and a frame that does not parse names none.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from market_ingestor.observability import tally

NO_SYMBOL = "none"  # the symbol label of frames that carry no market event (acks, heartbeats, errors)

FRAMES = tally("market_frames", "WebSocket frames received, by the symbol of their events", ("exchange", "symbol"))
EVENTS = tally("market_events", "Normalized events produced", ("exchange", "symbol", "type"))
DEAD_LETTERS = Counter("market_dead_letters_total", "Frames that could not be normalized", ["exchange"])
# The dead letters of well-formed frames that give no event (NotNormalized): a channel or API version the parser
# does not handle, or a frame too incomplete for an event. reason is "unhandled" or "incomplete": bounded.
NOT_NORMALIZED = Counter(
    "market_frames_not_normalized_total",
    "Well-formed frames that gave no event and are not protocol chatter (also dead-lettered)",
    ["exchange", "reason"],
)
SEQUENCE_GAPS = Counter(
    "market_sequence_gaps_total", "Missing trade ids or book sequence numbers", ["exchange", "symbol", "kind"]
)
BOOK_RESYNCS = Counter("market_book_resyncs_total", "Order books resynchronized from a fresh snapshot", ["exchange"])
RECONNECTS = Counter("market_reconnects_total", "WebSocket reconnections", ["exchange"])
CONNECTED = Gauge("market_connections", "Open WebSocket connections", ["exchange"])
PUBLISHED = tally("ingest_published", "Events published to the bus", ("topic",))
INGEST_LATENCY = Histogram(
    "ingest_latency_seconds",
    "Exchange event time to publish (a sample of the events)",
    ["exchange"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
QUEUE_DEPTH = Gauge("ingest_queue_depth", "Frames' events waiting to be published")
