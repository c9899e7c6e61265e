"""What the ingest side counts, as Prometheus metrics (served by issue 6's /metrics).

Labels are bounded: exchange (five values), event type (a handful) and symbol, which only takes the symbols an
operator configured (unknown symbols are rejected before anything is counted under their name).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class Tally(Collector):
    """A counter for the per-event hot path: a plain dict increment, turned into a Prometheus counter family
    only when scraped (a prometheus_client Counter takes a lock and a label lookup per increment)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: defaultdict[tuple[str, ...], int] = defaultdict(int)

    def value(self, *labels: str) -> int:
        return self.counts.get(labels, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        # list() copies in one step under the GIL, so a scrape thread never sees the dict change under it.
        for labels, count in list(self.counts.items()):
            family.add_metric(labels, count)
        yield family


def tally(name: str, documentation: str, labelnames: tuple[str, ...]) -> Tally:
    collector = Tally(name, documentation, labelnames)
    REGISTRY.register(collector)
    return collector


FRAMES = tally("market_frames", "WebSocket frames received", ("exchange",))
EVENTS = tally("market_events", "Normalized events produced", ("exchange", "symbol", "type"))
DEAD_LETTERS = Counter("market_dead_letters_total", "Frames that could not be normalized", ["exchange"])
SEQUENCE_GAPS = Counter(
    "market_sequence_gaps_total", "Missing trade ids or book sequence numbers", ["exchange", "symbol", "kind"]
)
BOOK_RESYNCS = Counter("market_book_resyncs_total", "Order books resynchronized from a fresh snapshot", ["exchange"])
RECONNECTS = Counter("market_reconnects_total", "WebSocket reconnections", ["exchange"])
CONNECTED = Gauge("market_connections", "Open WebSocket connections", ["exchange"])
PUBLISHED = tally("trade_process", "Events published to the bus", ("topic",))
INGEST_LATENCY = Histogram(
    "ingest_latency_seconds",
    "Exchange event time to publish",
    ["exchange"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
QUEUE_DEPTH = Gauge("ingest_queue_depth", "Events waiting to be published")
