"""What the chaos run (bench/chaos.py) does differently on each bus, in one place: the ``[bus]`` configuration,
which dev-stack server is the bus's fault target, and where the pipeline's progress is read from.

Progress has one shape on both buses (chaos_services.OffsetHistory): per (topic, partition) the *end* (records
written) and, per consumer group, the *committed* position (records consumed), so that committed = end means
caught up. On Kafka these are end offsets and committed group offsets (chaos_services.OffsetReader). On NATS
JetStream (:class:`NatsOffsetReader`) a topic is one stream, partition 0: its end is the stream's last sequence;
the sink's group is its durable consumers' ack floor, and the stream worker (which has no durable consumer) is
its oldest shard checkpoint in the progress bucket, both as the control panel reads them (api/offsets_nats.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from chaos_services import OffsetReader, Offsets, ProgressReader
from market_ingestor.api.offsets_nats import DurableConsumers, LagSource, WorkerCheckpoints
from market_ingestor.bus.nats import connect_client, stream_name
from market_ingestor.config import NatsConfig
from market_ingestor.devstack import StackInfo
from market_ingestor.errors import BusError

READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BusUnderTest:
    kind: str  # bus.kind
    server: str  # the dev-stack server stopped and started as the bus fault (chaos_services.StackServer)
    url: str  # how the services reach it
    takeover_s: float  # a worker that stops heartbeating loses its share of the work after this long

    def config(self, prefix: str, publish_timeout_ms: int) -> str:
        """The ``[bus]`` tables of the run's configuration. ``publish_timeout_ms`` (0: the default) bounds how long
        a publisher waits for the bus to confirm (Kafka's ``request_timeout_ms``, NATS' ``ack_timeout_s``)."""
        bus = f'[bus]\nkind = "{self.kind}"\ntopic_prefix = "{prefix}"\n'
        if self.kind == "nats":
            timeout = f"\nack_timeout_s = {publish_timeout_ms / 1000}" if publish_timeout_ms else ""
            return bus + f'[bus.nats]\nurl = "{self.url}"\nlease_ttl_s = {self.takeover_s}' + timeout
        timeout = f"\nrequest_timeout_ms = {publish_timeout_ms}" if publish_timeout_ms else ""
        return (
            bus + f'[bus.kafka]\nbootstrap = "{self.url}"\npartitions = 4\n'
            f"session_timeout_ms = {round(self.takeover_s * 1000)}" + timeout
        )

    def reader(self, nats: NatsConfig, app_id: str, prefix: str) -> ProgressReader:
        if self.kind == "nats":
            return NatsOffsetReader(nats, app_id, prefix)
        return OffsetReader(self.url)


def bus_under_test(kind: str, stack: StackInfo, takeover_s: float) -> BusUnderTest:
    if kind == "nats":
        return BusUnderTest("nats", "nats", stack.nats_url, takeover_s)
    if kind == "kafka":
        return BusUnderTest("kafka", "kafka", stack.kafka_bootstrap, takeover_s)
    raise ValueError(f"--bus {kind!r}: expected kafka or nats")


class NatsOffsetReader:
    """:class:`chaos_services.OffsetReader`'s answers on NATS JetStream (see the module docstring), on one
    connection opened again after any failure (the server is one of the fault targets)."""

    def __init__(self, config: NatsConfig, app_id: str, prefix: str) -> None:
        self.config, self.app_id, self.prefix = config, app_id, prefix
        self._client: NatsClient | None = None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(NatsError, OSError, TimeoutError):  # the server is away: nothing to close cleanly
                await asyncio.wait_for(client.close(), READ_TIMEOUT_S)

    async def read(self, topics: list[str], groups: list[str]) -> tuple[Offsets, dict[str, Offsets]] | None:
        try:
            return await asyncio.wait_for(self._read(topics, groups), READ_TIMEOUT_S)
        except (NatsError, BusError, OSError, TimeoutError):
            await self.close()
            return None

    def _source(self, group: str) -> LagSource:
        return WorkerCheckpoints(group) if group == self.app_id else DurableConsumers("", group, self.prefix)

    async def _read(self, topics: Sequence[str], groups: Sequence[str]) -> tuple[Offsets, dict[str, Offsets]]:
        if self._client is None:
            self._client = await connect_client(self.config)
        js = self._client.jetstream()
        ends: dict[str, int] = {}  # logical topic -> the stream's last sequence
        for topic in topics:
            try:
                ends[topic.removeprefix(self.prefix)] = (await js.stream_info(stream_name(topic))).state.last_seq
            except NotFoundError:
                continue  # not created yet
        committed: dict[str, Offsets] = {}
        for group in groups:  # read after the ends, as the panel does: a checkpoint never runs ahead of its end
            progress = await self._source(group).progress(js, ends)
            committed[group] = {(self.prefix + p.topic, p.partition): p.committed for p in progress}
        return {(self.prefix + topic, 0): end for topic, end in ends.items()}, committed
