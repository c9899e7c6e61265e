"""What the push gateway counts: plain integers, cheap on the per-update path, read by a Prometheus collector
when one is wired in (issue 6's /metrics). Labels stay bounded: refusal reasons and error codes are fixed sets,
nothing is counted per client or per symbol."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class PushMetrics:
    clients: int = 0  # connected now
    connections_total: int = 0  # handshakes accepted
    refused_total: Counter[str] = field(default_factory=Counter)  # by reason: max_clients, origin, auth
    messages_sent_total: int = 0  # frames handed to client sockets (updates, replies, notices)
    updates_received_total: int = 0  # bus records turned into updates
    bad_records_total: int = 0  # bus records that did not decode as their topic's type
    updates_dropped_total: int = 0  # updates clients lost to a full queue or to conflation
    request_errors_total: Counter[str] = field(default_factory=Counter)  # error replies, by code
    lag_disconnects_total: int = 0  # clients closed for staying behind longer than push.max_behind_s
    idle_disconnects_total: int = 0  # clients closed for doing nothing for push.idle_timeout_s
