"""Volatility: Bollinger bands (windowed, exact sums of the close and its square) and ATR (Wilder, recursive)."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from market_ingestor.indicators.base import Indicator, multiplier, period, plain
from market_ingestor.indicators.core import ZERO, Avg, Window, div, rounded, sqrt, wilder
from market_ingestor.model import Kline


class BollingerBands(Indicator, tag="bbands", kw_only=True):
    """middle = SMA(period); upper/lower = middle +/- multiplier * the population standard deviation of the same
    ``period`` closes (divided by n, not n - 1: Bollinger's definition, talipp's and TA-Lib's).

    The variance is (n * sum(x^2) - sum(x)^2) / n^2 with an exact numerator: the textbook one-pass formula that
    cancels catastrophically in floats is exact here, never negative, and slides in O(1).
    """

    PARAMS = (period(), multiplier("multiplier"))
    OUTPUTS = ("lower", "middle", "upper")
    MUTABLE = ("window",)

    period: int
    multiplier: Decimal
    window: Window = msgspec.field(default_factory=Window)
    total: Decimal = ZERO  # exact sum of the window
    squares: Decimal = ZERO  # exact sum of the squares of the window

    @property
    def name(self) -> str:
        return f"bbands_{self.period}_{plain(self.multiplier)}"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        x, n = kline.close, self.period
        leaving = self.window.leaving(n, replace) or ZERO
        total = self.total + x - leaving
        squares = self.squares + x * x - leaving * leaving
        self.window.put(x, n, replace)
        self.total, self.squares = total, squares
        if len(self.window) < n:
            return None
        middle = div(total, n)
        width = self.multiplier * sqrt(div(n * squares - total * total, n * n))
        return {"lower": rounded(middle - width), "middle": middle, "upper": rounded(middle + width)}

    def _problem(self) -> str | None:
        return self.window.problem(self.period)


class AtrAcc(msgspec.Struct, frozen=True, array_like=True, gc=False):
    close: Decimal | None = None  # the previous close; None before the first kline
    true_range: Avg = Avg()


def atr_step(acc: AtrAcc, kline: Kline, n: int) -> AtrAcc:
    high, low, previous = kline.high, kline.low, acc.close
    # No previous close for the first kline: its true range is its own range.
    true_range = high - low if previous is None else max(high - low, abs(high - previous), abs(low - previous))
    return AtrAcc(kline.close, wilder(acc.true_range, true_range, n))


class ATR(Indicator, tag="atr", kw_only=True):
    """Average true range with Wilder's smoothing. The true range is max(high - low, |high - previous close|,
    |low - previous close|); the first kline has no previous close, so its true range is high - low and it counts
    towards the seed: the first value, the mean of the first ``period`` true ranges, comes at the ``period``-th
    kline (talipp's convention; TA-Lib drops the first kline and starts one later)."""

    PARAMS = (period(),)

    period: int
    before: AtrAcc = msgspec.field(default_factory=AtrAcc)
    current: AtrAcc = msgspec.field(default_factory=AtrAcc)

    @property
    def name(self) -> str:
        return f"atr_{self.period}"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        before = self.before if replace else self.current
        self.before, self.current = before, atr_step(before, kline, self.period)
        true_range = self.current.true_range
        return {"value": true_range.value} if true_range.ready(self.period) else None
