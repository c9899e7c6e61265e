"""The one retry policy (retry.py): pure waits, the count of one loop, and an explicit end."""

import logging
import random

import pytest

from market_ingestor.errors import RetriesExhausted
from market_ingestor.retry import RetryPolicy


@pytest.mark.parametrize(
    ("attempt", "cap"), [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (7, 60.0), (500, 60.0)]
)
def test_the_cap_doubles_from_one_second_up_to_sixty(attempt, cap):
    backoff = RetryPolicy(1.0, 60.0, jitter=True).retries("test")
    backoff.attempt = attempt
    assert backoff.cap_s() == cap


def test_delays_are_full_jitter_below_the_cap_and_reset_starts_over():
    backoff = RetryPolicy(1.0, 60.0, jitter=True).retries("test", random.Random(7))
    delays = [backoff.next_delay_s() for _ in range(12)]
    caps = [min(60.0, 2.0**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay_s() <= 1.0


def test_backoff_doubles_up_to_its_bound():
    delays = RetryPolicy(0.1, 0.5).delays()
    assert [next(delays) for _ in range(6)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]


def test_a_policy_without_an_end_retries_forever():
    policy = RetryPolicy(1.0, 2.0)
    assert not policy.gives_up_at(10**9)
    retries = policy.retries("forever")
    assert [retries.next_delay_s() for _ in range(10_000)][-1] == 2.0


def test_a_policy_with_an_end_gives_up_after_that_many_retries_and_says_who(caplog):
    policy = RetryPolicy(0.5, 30.0, give_up_after=3)
    assert list(policy.delays()) == [0.5, 1.0, 2.0]
    retries = policy.retries("binance BTCUSDT book snapshot")
    assert [retries.next_delay_s() for _ in range(3)] == [0.5, 1.0, 2.0]
    with caplog.at_level(logging.ERROR, "market_ingestor.retry"), pytest.raises(RetriesExhausted) as raised:
        retries.next_delay_s()
    assert str(raised.value) == "binance BTCUSDT book snapshot: gave up after 3 retries"
    assert [r.getMessage() for r in caplog.records] == ["binance BTCUSDT book snapshot: gave up after 3 retries"]
    retries.reset()  # a success in between starts the count over
    assert retries.next_delay_s() == 0.5
