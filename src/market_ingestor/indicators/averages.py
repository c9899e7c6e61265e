"""Moving averages of the close: SMA, WMA (windowed, exact running sums) and EMA (recursive, seeded).

A windowed indicator replaces a revised latest kline by swapping the last window item and adjusting its sums by
the difference, which is exact (core.EXACT), so the result is digit for digit the one it would have had if it had
seen the corrected kline in the first place. EMA keeps its accumulator from before the latest kline and
recomputes from it.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from market_ingestor.indicators.base import Indicator, period
from market_ingestor.indicators.core import ZERO, Avg, Window, div, ema
from market_ingestor.model import Kline


class SMA(Indicator, tag="sma", kw_only=True):
    """Simple moving average of the last ``period`` closes: their exact sum, divided once."""

    PARAMS = (period(),)
    MUTABLE = ("window",)

    period: int
    window: Window = msgspec.field(default_factory=Window)
    total: Decimal = ZERO  # the exact sum of the window

    @property
    def name(self) -> str:
        return f"sma_{self.period}"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        x = kline.close
        total = self.total + x - (self.window.leaving(self.period, replace) or ZERO)
        self.window.put(x, self.period, replace)
        self.total = total
        if len(self.window) < self.period:
            return None
        return {"value": div(total, self.period)}

    def _problem(self) -> str | None:
        return self.window.problem(self.period)


class WMA(Indicator, tag="wma", kw_only=True):
    """Linearly weighted moving average: weights 1 (oldest) .. ``period`` (latest), over their sum n(n+1)/2.

    The weighted sum slides in O(1): moving the window on lowers every remaining weight by one, which subtracts
    the plain sum of the old window (the evicted item's weight 1 included), and the new close enters at weight n.
    """

    PARAMS = (period(),)
    MUTABLE = ("window",)

    period: int
    window: Window = msgspec.field(default_factory=Window)
    total: Decimal = ZERO  # the exact plain sum of the window
    weighted: Decimal = ZERO  # the exact weighted sum of the window

    @property
    def name(self) -> str:
        return f"wma_{self.period}"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        x, n, size = kline.close, self.period, len(self.window)
        leaving = self.window.leaving(n, replace)
        if replace:  # the latest keeps its weight (the window size); only its value changes
            assert leaving is not None
            weighted = self.weighted + size * (x - leaving)
        elif leaving is not None:  # a full window slides
            weighted = self.weighted - self.total + n * x
        else:  # still filling: the new close is the (size + 1)-th, weighted size + 1
            weighted = self.weighted + (size + 1) * x
        total = self.total + x - (leaving or ZERO)
        self.window.put(x, n, replace)
        self.total, self.weighted = total, weighted
        if len(self.window) < n:
            return None
        return {"value": div(weighted, n * (n + 1) // 2)}

    def _problem(self) -> str | None:
        return self.window.problem(self.period)


class EMA(Indicator, tag="ema", kw_only=True):
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the SMA of the first ``period`` closes
    (first value at the ``period``-th close), as talipp, TA-Lib and most charting tools do."""

    PARAMS = (period(),)

    period: int
    before: Avg = msgspec.field(default_factory=Avg)  # the accumulator before the latest kline
    current: Avg = msgspec.field(default_factory=Avg)  # ... and after it

    @property
    def name(self) -> str:
        return f"ema_{self.period}"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        before = self.before if replace else self.current
        self.before, self.current = before, ema(before, kline.close, self.period)
        return {"value": self.current.value} if self.current.ready(self.period) else None
