"""Label values that stay bounded, and a counter cheap enough for the per-event path.

Every labelled metric multiplies into one series per label combination, and Prometheus keeps each series in
memory. Exchanges are a fixed set (the registry); symbols are not: operators add them at runtime and any
record on the bus can name one. :class:`SymbolLabels` gives a symbol its own label value only while fewer than
``metrics.max_symbols`` have one (the configured symbols are admitted first, at start); any later symbol is
counted under ``other``, and a name outside the exchange registry under ``other`` as well.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

OTHER = "other"


class SymbolLabels:
    def __init__(self, limit: int = 1_000, exchanges: Collection[str] | None = None) -> None:
        self.limit = limit
        self._exchanges = exchanges
        self._admitted: set[tuple[str, str]] = set()

    def configure(self, limit: int, configured: Iterable[tuple[str, str]] = ()) -> None:
        """Sets the cap and admits the configured (exchange, symbol) pairs first, in order."""
        self.limit = limit
        for exchange, symbol in configured:
            self(exchange, symbol)

    def exchange(self, name: str) -> str:
        if self._exchanges is None:
            from market_ingestor.ingestor.exchanges import REGISTRY as EXCHANGES  # the one list of exchanges

            self._exchanges = frozenset(EXCHANGES)
        return name if name in self._exchanges else OTHER

    def __call__(self, exchange: str, symbol: str) -> tuple[str, str]:
        """(exchange, symbol) label values: the pair itself once admitted, else the exchange and ``other``."""
        pair = (exchange, symbol)
        if pair in self._admitted:
            return pair
        if self.exchange(exchange) == OTHER:
            return OTHER, OTHER
        if len(self._admitted) < self.limit:
            self._admitted.add(pair)
            return pair
        return exchange, OTHER

    def __len__(self) -> int:
        return len(self._admitted)


SYMBOLS = SymbolLabels()  # one per process: the series it bounds live in the process-wide registry


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

    def describe(self) -> Iterator[CounterMetricFamily]:
        # Lets the registry check names at registration and list this family without collecting it.
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


def tally(name: str, documentation: str, labelnames: tuple[str, ...]) -> Tally:
    collector = Tally(name, documentation, labelnames)
    REGISTRY.register(collector)
    return collector
