"""The one retry policy of every loop that retries: a reconnecting socket, the sink's database writes, the
instrument listing, a book snapshot, the panel's followers, the push gateway's bus reads.

A :class:`RetryPolicy` is pure data: waits from ``initial_s`` doubling to ``max_s``, optionally with full jitter
(a uniform draw between 0 and that cap, so the clients of an exchange-wide outage do not retry in lockstep), and
an explicit end: ``give_up_after=None`` retries forever, a number gives up after that many retries. A loop keeps
its count in :class:`Retries` (``policy.retries("what")``), which resets after a success and, on giving up, logs
an error naming what gave up and raises :class:`~market_ingestor.errors.RetriesExhausted`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

from market_ingestor.errors import RetriesExhausted

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float  # float-ok: a duration
    max_s: float  # float-ok: a duration
    jitter: bool = False  # full jitter: each wait is drawn uniformly between 0 and its cap
    give_up_after: int | None = None  # retries; None: retry forever

    def cap_s(self, retry: int) -> float:  # float-ok: a duration
        """The longest wait before retry number ``retry`` (from 0): initial, doubling per retry, at most max."""
        return min(self.max_s, self.initial_s * (2 ** min(retry, 62)))

    def delay_s(self, retry: int, rng: random.Random) -> float:  # float-ok: a duration
        cap = self.cap_s(retry)
        return rng.uniform(0.0, cap) if self.jitter else cap

    def gives_up_at(self, retry: int) -> bool:
        return self.give_up_after is not None and retry >= self.give_up_after

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before successive retries; the iterator ends where the policy gives up."""
        rng = rng or random.Random()
        retry = 0
        while not self.gives_up_at(retry):
            yield self.delay_s(retry, rng)
            retry += 1

    def retries(self, what: str, rng: random.Random | None = None) -> Retries:
        """The retry count of one loop; ``what`` names it in the log when it gives up."""
        return Retries(self, what, rng)


class Retries:
    """One loop's retries under a :class:`RetryPolicy`."""

    def __init__(self, policy: RetryPolicy, what: str, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.what = what
        self.attempt = 0  # retries since the start or the last reset
        self._rng = rng or random.Random()

    def cap_s(self) -> float:  # float-ok: a duration
        """The upper bound of the next wait."""
        return self.policy.cap_s(self.attempt)

    def next_delay_s(self) -> float:  # float-ok: a duration
        """The wait before the next retry. Raises RetriesExhausted (logged as an error) once the policy gives up."""
        if self.policy.gives_up_at(self.attempt):
            log.error("%s: gave up after %d retries", self.what, self.attempt, extra={"retries": self.attempt})
            raise RetriesExhausted(f"{self.what}: gave up after {self.attempt} retries")
        delay = self.policy.delay_s(self.attempt, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts over at ``initial_s``."""
        self.attempt = 0
