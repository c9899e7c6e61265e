import random

import pytest

from market_ingestor.ingestor.backoff import Backoff


@pytest.mark.parametrize(
    ("attempt", "cap"), [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (7, 60.0), (500, 60.0)]
)
def test_the_cap_doubles_from_one_second_up_to_sixty(attempt, cap):
    backoff = Backoff(1.0, 60.0)
    backoff.attempt = attempt
    assert backoff.cap_s() == cap


def test_delays_are_full_jitter_below_the_cap_and_reset_starts_over():
    backoff = Backoff(1.0, 60.0, random.Random(7))
    delays = [backoff.next_delay_s() for _ in range(12)]
    caps = [min(60.0, 2.0**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed schedule
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay_s() <= 1.0
