"""Shards of the stream worker on NATS: the instrument -> shard function, the assignment to live workers and the
lease decisions of one worker."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

from market_ingestor.streams.shards import assignment, plan_leases, shard_of


def test_an_instrument_has_the_shard_kafka_gives_its_partition():
    for key in (b"binance.BTCUSDT", b"okx.ETHUSDT", b"kraken.XBTUSD"):
        assert shard_of(key, 12) == (murmur2(key) & 0x7FFFFFFF) % 12


def test_every_shard_goes_to_exactly_one_live_worker_evenly():
    owned = assignment(12, ["b", "a", "c"])
    assert owned == {"a": {0, 3, 6, 9}, "b": {1, 4, 7, 10}, "c": {2, 5, 8, 11}}
    assert assignment(5, []) == {}
    assert assignment(3, ["a", "a"]) == {"a": {0, 1, 2}}


def test_a_worker_alone_claims_every_free_shard():
    plan = plan_leases("a", 4, ["a"], {})
    assert (plan.claim, plan.release, plan.wait) == ({0, 1, 2, 3}, set(), set())


def test_a_joining_worker_waits_for_its_share_and_the_holder_releases_it():
    holders = dict.fromkeys(range(4), "a")
    joining = plan_leases("b", 4, ["a", "b"], holders)
    assert (joining.claim, joining.release, joining.wait) == (set(), set(), {1, 3})
    holding = plan_leases("a", 4, ["a", "b"], holders)
    assert (holding.claim, holding.release, holding.wait) == (set(), {1, 3}, set())
    after = plan_leases("b", 4, ["a", "b"], {0: "a", 2: "a"})
    assert after.claim == {1, 3}


def test_the_shards_of_a_worker_whose_leases_expired_are_claimed_by_the_survivor():
    # "b" stopped heartbeating: its member key and leases expired, so neither appears any more.
    plan = plan_leases("a", 4, ["a"], {0: "a", 2: "a"})
    assert plan.claim == {1, 3} and not plan.release


def test_a_worker_counts_itself_live_before_its_heartbeat_is_seen():
    assert plan_leases("a", 2, [], {}).claim == {0, 1}
