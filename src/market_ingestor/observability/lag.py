"""The ``consumer_lag`` gauge, and its sampler for a consumer of the bus adapter (the sink).

Lag is the records after the consumer's position in each partition it is assigned now: only assigned partitions
are reported, so the members of one group never report a partition twice and ``sum by (topic) (consumer_lag)``
is the group's lag; a partition that moved to another member disappears from this one's series. (The Faust
worker's sampler is :mod:`market_ingestor.observability.consumer`.)
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from market_ingestor.bus import Subscriber
from market_ingestor.errors import BusError

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "consumer_lag",
    "Records after the consumer's position in an assigned partition (high watermark - position)",
    ["group", "topic", "partition"],
)


class SubscriberLag:
    """Sets ``consumer_lag`` from ``subscriber.lag()`` every ``interval_s`` (:meth:`run`, until cancelled)."""

    def __init__(self, subscriber: Subscriber, group: str, interval_s: float) -> None:  # float-ok: a duration
        self.subscriber = subscriber
        self.group = group
        self.interval_s = interval_s  # float-ok: a duration
        self._reported: set[tuple[str, int]] = set()
        self._failures = 0

    async def sample(self) -> None:
        try:
            lag = await self.subscriber.lag()
        except BusError as exc:  # e.g. a rebalance took a partition meanwhile: next time
            self._failures += 1
            if self._failures & (self._failures - 1) == 0:  # 1st, 2nd, 4th, ... time: the log stays readable
                log.warning("consumer lag not read", extra={"group": self.group, "error": str(exc)})
            return
        for (topic, partition), records in lag.items():
            CONSUMER_LAG.labels(self.group, topic, str(partition)).set(records)
        for topic, partition in self._reported - lag.keys():
            CONSUMER_LAG.remove(self.group, topic, str(partition))
        self._reported = set(lag)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sample()
