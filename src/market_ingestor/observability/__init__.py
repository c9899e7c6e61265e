"""Prometheus metrics and health for every service.

- :mod:`~market_ingestor.observability.server`: ``/metrics`` and ``/healthz`` over HTTP on a service's
  ``metrics_port`` (ingest, worker, sink, push; the api serves both on its own aiohttp app).
- :mod:`~market_ingestor.observability.labels`: bounded label values for exchanges and symbols, and the cheap
  hot-path counter (:class:`Tally`).
- :mod:`~market_ingestor.observability.consumer`: consumer lag per topic and partition, and the Faust wiring.
"""

from market_ingestor.observability.labels import OTHER, SYMBOLS, SymbolLabels, Tally, tally
from market_ingestor.observability.server import Health, MetricsServer, exposition

__all__ = ["OTHER", "SYMBOLS", "Health", "MetricsServer", "SymbolLabels", "Tally", "exposition", "tally"]
