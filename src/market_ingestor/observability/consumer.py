"""Consumer lag per topic and partition, and the metrics server as a service of a Faust worker (the stream
worker; the sink, on the bus adapter, samples its lag with :mod:`market_ingestor.observability.lag`).

Lag is read from this process's own consumer every ``metrics.sample_interval_s``: for each partition it is
assigned, the high watermark (the last stable offset under ``read_committed``) minus the consumer's position,
i.e. the records not fetched yet. Only assigned partitions are reported, so the workers of one group never
report a partition twice and ``sum by (topic) (consumer_lag)`` is the group's lag; a partition moved to
another worker disappears from this one's series.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.types import TP
from mode import Service

from market_ingestor.config import MetricsConfig
from market_ingestor.observability.lag import CONSUMER_LAG
from market_ingestor.observability.server import Health, MetricsServer

log = logging.getLogger(__name__)


class LagSampler:
    def __init__(self, app: faust.App, topics: Collection[str]) -> None:
        self.app = app
        self.group: str = app.conf.id
        self.topics = frozenset(topics)
        self._reported: set[TP] = set()
        self._failures = 0

    async def sample(self) -> None:
        consumer: Any = self.app.consumer
        assigned = sorted(tp for tp in consumer.assignment() if tp.topic in self.topics)
        try:
            highs = await consumer.highwaters(*assigned) if assigned else {}
            positions = {tp: await consumer.position(tp) for tp in assigned}
        except (KafkaError, TimeoutError) as exc:  # e.g. a rebalance took a partition meanwhile: next time
            self._failures += 1
            if self._failures & (self._failures - 1) == 0:  # 1st, 2nd, 4th, ... time: the log stays readable
                log.warning("consumer lag not read", extra={"group": self.group, "error": repr(exc)})
            return
        reported = set()
        for tp in assigned:
            high, position = highs.get(tp), positions[tp]
            if high is not None and position is not None:
                CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(max(0, high - position))
                reported.add(tp)
        for tp in self._reported - reported:
            CONSUMER_LAG.remove(self.group, tp.topic, str(tp.partition))
        self._reported = reported


def app_health(app: faust.App, details: Callable[[], Mapping[str, Any]] | None = None) -> Health:
    """Healthy while the Faust app runs (not while it starts or stops); rebalancing and table recovery are
    reported alongside."""
    state = app.state
    report: dict[str, Any] = {
        "state": state,
        "rebalancing": bool(app.rebalancing),
        "recovering": bool(getattr(app, "in_recovery", False)),
    }
    if state == "running" and app.consumer is not None:
        report["partitions"] = len(app.consumer.assignment())
    if details is not None:
        report.update(details())
    return Health(state == "running", report)


class MetricsService(Service):
    """The metrics server and the periodic samplers (lag, table sizes), started before the Faust app and stopped
    after it (a service given to ``faust.Worker`` next to the app), so ``/healthz`` answers "init" during start-up
    and recovery. A sampler runs only while the app runs and is not rebalancing."""

    def __init__(
        self,
        app: faust.App,
        server: MetricsServer,
        samplers: Sequence[Callable[[], Awaitable[None]]],
        interval_s: float,  # float-ok: a duration
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.server = server
        self.samplers = samplers
        self.interval_s = interval_s  # float-ok: a duration

    async def on_start(self) -> None:
        await self.server.start()

    async def on_stop(self) -> None:
        await self.server.stop()

    @Service.task
    async def _sample(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval_s)
            if self.app.state == "running" and not self.app.rebalancing:
                for sample in self.samplers:
                    await sample()


def metrics_service(
    app: faust.App,
    settings: MetricsConfig,
    port: int,
    setting: str,
    topics: Collection[str],
    *samplers: Callable[[], Awaitable[None]],
    details: Callable[[], Mapping[str, Any]] | None = None,
) -> MetricsService:
    """The service for ``app``: ``/metrics`` and ``/healthz`` on ``port`` (with ``details`` in the health
    answer), the lag of ``topics`` and the other ``samplers`` every ``metrics.sample_interval_s``."""
    server = MetricsServer(settings.host, port, lambda: app_health(app, details), setting)
    lag = LagSampler(app, topics)
    return MetricsService(app, server, [lag.sample, *samplers], settings.sample_interval_s)
