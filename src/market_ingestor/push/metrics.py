"""What the push gateway counts: plain integers, cheap on the per-update path, read at scrape time by
:class:`PushCollector` (the push command registers it and serves ``/metrics`` on ``push.metrics_port``). Labels
stay bounded: refusal reasons and error codes are fixed sets, nothing is counted per client or per symbol."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Why the gateway refuses a handshake (gateway.py ``_refuse``; keep the two together): the label values of
#: ``push_refused_total``.
REFUSAL_REASONS = ("stopping", "max_clients", "origin", "auth", "auth_unavailable")


@dataclass(slots=True)
class PushMetrics:
    clients: int = 0  # connected now
    connections_total: int = 0  # handshakes accepted
    # by reason; every reason is there at 0 from the start, so the dashboard's panel has a series before a refusal
    refused_total: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(REFUSAL_REASONS, 0)))
    messages_sent_total: int = 0  # frames handed to client sockets (updates, replies, notices)
    updates_received_total: int = 0  # bus records turned into updates
    bad_records_total: int = 0  # events of bus records that did not decode as their topic's type (skipped)
    updates_dropped_total: int = 0  # updates clients lost to a full queue or to conflation
    updates_superseded_total: int = 0  # queued revisions replaced by a newer revision of the same kline or value
    request_errors_total: Counter[str] = field(default_factory=Counter)  # error replies, by code
    lag_disconnects_total: int = 0  # clients closed for staying behind longer than push.max_behind_s
    idle_disconnects_total: int = 0  # clients closed for doing nothing for push.idle_timeout_s


class PushCollector(Collector):
    """The gateway's counters as Prometheus metrics, read at scrape time (nothing is counted twice)."""

    def __init__(self, metrics: PushMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield CounterMetricFamily("ws_connections", "WebSocket connections accepted", value=m.connections_total)
        yield GaugeMetricFamily("ws_clients", "WebSocket clients connected now", value=m.clients)
        yield CounterMetricFamily(
            "push_updates_dropped",
            "Updates clients lost to a full queue or to conflation",
            value=m.updates_dropped_total,
        )
        yield CounterMetricFamily(
            "push_updates_superseded",
            "Queued closed klines and indicator values replaced by a newer revision of the same (not lost)",
            value=m.updates_superseded_total,
        )
        yield CounterMetricFamily("push_messages_sent", "Frames handed to client sockets", value=m.messages_sent_total)
        yield CounterMetricFamily(
            "push_updates_received", "Bus records turned into updates", value=m.updates_received_total
        )
        yield CounterMetricFamily(
            "push_bad_records",
            "Events of bus records that did not decode as their topic's type",
            value=m.bad_records_total,
        )
        disconnects = CounterMetricFamily(
            "push_disconnects", "Clients closed by the gateway: staying behind (lag) or idle", labels=["reason"]
        )
        disconnects.add_metric(["lag"], m.lag_disconnects_total)
        disconnects.add_metric(["idle"], m.idle_disconnects_total)
        yield disconnects
        yield _by_label("push_refused", "Handshakes refused", "reason", m.refused_total)
        yield _by_label("push_request_errors", "Error replies to client requests", "code", m.request_errors_total)

    def describe(self) -> Iterator[Metric]:
        return self.collect()


def _by_label(name: str, documentation: str, label: str, counts: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    # list() copies in one step under the GIL: the scrape runs in a thread while the gateway counts on.
    for value, count in sorted(list(counts.items())):
        family.add_metric([value], count)
    return family
