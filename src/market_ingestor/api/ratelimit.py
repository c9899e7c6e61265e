"""Per-key token buckets: ``rate`` requests per second on average, bursts of up to ``burst``.

Each API instance keeps its own buckets (no shared store on the request path), so N instances behind a load
balancer admit up to N times the rate for a key that is spread over all of them. The map is bounded: past
``max_keys`` the least recently used bucket is dropped (it refills to full anyway when idle long enough).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(self, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:  # float-ok
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # float-ok: (tokens, at)
        self._max_keys = max_keys
        self._clock = clock

    def take(self, key: str, rate_per_s: int, burst: int) -> float:  # float-ok: seconds
        """0 when the request may go ahead (a token is used), else the seconds until a token is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(burst), now))  # float-ok: token count
        tokens = min(float(burst), tokens + (now - at) * rate_per_s)  # float-ok: token count
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / rate_per_s
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait_s


def retry_after(wait_s: float) -> str:  # float-ok: seconds
    """The Retry-After header: whole seconds, at least 1 (HTTP has no fractions here)."""
    return str(max(1, math.ceil(wait_s)))
