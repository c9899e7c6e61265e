"""What the query API counts, as Prometheus metrics (served at its own ``/metrics``). Labels are bounded: the
declared route names (``unmatched`` for anything else) and HTTP status codes."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

UNMATCHED = "unmatched"

REQUESTS = Counter("api_requests_total", "HTTP requests answered", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "api_request_seconds",
    "Time to answer a request, in the server",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
