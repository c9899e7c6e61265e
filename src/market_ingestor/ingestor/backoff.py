"""Reconnect delays: exponential with full jitter, reset after a healthy connection.

Full jitter (a uniform draw between 0 and the exponential cap) spreads the reconnects of many clients after an
exchange-wide outage instead of having them retry in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float = 1.0, max_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def cap_s(self) -> float:
        """The upper bound of the next delay: initial, doubling per attempt, at most max."""
        return min(self.max_s, self.initial_s * (2 ** min(self.attempt, 62)))

    def next_delay_s(self) -> float:
        delay = self._rng.uniform(0.0, self.cap_s())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
