"""Which stream worker on NATS owns which instruments: shards, their assignment to the live workers, and the
worker's lease decisions. Pure; the I/O (a JetStream key-value bucket of leases) is in ``streams/nats_state.py``.

An instrument belongs to shard ``murmur2("{exchange}.{symbol}") % shards``: the same function Kafka's
partitioner applies to the same key, so a shard is to the NATS worker what a partition is to the Faust worker.
The shards are spread over the live workers round-robin by sorted worker id, so every worker computes the same
assignment from the same membership. Why this and not Faust-style rebalancing: docs/nats-worker.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.partitioner import murmur2


def shard_of(key: bytes, shards: int) -> int:
    """The shard of an instrument key (``b"binance.BTCUSDT"``)."""
    return (murmur2(key) & 0x7FFFFFFF) % shards


def assignment(shards: int, members: Iterable[str]) -> dict[str, frozenset[int]]:
    """Each live worker's shards: shard ``n`` goes to the ``n % len(members)``-th worker id in sorted order."""
    ordered = sorted(set(members))
    owned: dict[str, set[int]] = {member: set() for member in ordered}
    for shard in range(shards):
        if ordered:
            owned[ordered[shard % len(ordered)]].add(shard)
    return {member: frozenset(mine) for member, mine in owned.items()}


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """What a worker does with its leases this round."""

    release: frozenset[int]  # held but assigned to another live worker: checkpoint, then give up
    claim: frozenset[int]  # assigned to this worker and free (no holder, or the holder's lease expired)
    wait: frozenset[int]  # assigned to this worker but still held by another: claimed once it lets go


def plan_leases(me: str, shards: int, members: Iterable[str], holders: Mapping[int, str]) -> LeasePlan:
    """``holders``: the current holder of each shard whose lease has not expired (a shard absent is free)."""
    live = set(members) | {me}
    mine = assignment(shards, live)[me]
    held = {shard for shard, holder in holders.items() if holder == me}
    return LeasePlan(
        release=frozenset(held - mine),
        claim=frozenset(shard for shard in mine if shard not in holders),
        wait=frozenset(shard for shard in mine if holders.get(shard, me) != me),
    )
