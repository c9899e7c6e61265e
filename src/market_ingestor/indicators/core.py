"""The arithmetic every indicator shares: two decimal contexts, a serializable ring buffer, seeded averages.

Exactness: sums, differences and products are computed exactly (``EXACT`` holds 200 digits and traps
``Inexact``: a kline value outside the market range the parsers admit, adjusted exponent -30..30, raises instead
of rounding), so a running sum never drifts: after a million updates it equals the sum recomputed over the window,
digit for digit, and undoing an input by subtraction is exact. Every division and square root rounds once, to 34
significant digits half-even (``ROUNDING``, IEEE decimal128's precision). Nothing is quantized: an SMA of prices
with two decimals that divides exactly comes out exact (``Decimal("27123.4575")``), others carry 34 digits.
Recursive averages (EMA, Wilder) keep their 34-digit rounded value; each step shrinks the inherited error by the
smoothing factor and adds at most half a unit of new rounding, so the error is bounded (about period/2 units in the
34th digit) however long the series runs.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import msgspec

# Divisions and square roots; the only operations that round.
ROUNDING = decimal.Context(
    prec=34,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
# Everything else runs in the EXACT context (``Indicator.step`` enters it), so `+ - *` never round and
# results never depend on whichever context the calling thread happens to have. An accidental inexact `/` traps.
EXACT = decimal.Context(
    prec=200,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
ZERO = Decimal(0)


def div(numerator: Decimal, denominator: Decimal | int) -> Decimal:
    return ROUNDING.divide(numerator, denominator)


def sqrt(value: Decimal) -> Decimal:
    return ROUNDING.sqrt(value)


def rounded(value: Decimal) -> Decimal:
    """``value`` to 34 significant digits: every emitted value has at most that many."""
    return ROUNDING.plus(value)


class Window(msgspec.Struct, array_like=True, gc=False):
    """The latest inputs, at most ``size`` of them (the owner passes its period), oldest evicted first.

    A ring buffer over a list: a bounded deque that msgspec serializes natively (it has no deque type), O(1) per
    update. ``start`` is where the oldest item sits once the ring is full, and 0 until then.
    """

    items: list[Decimal] = msgspec.field(default_factory=list)
    start: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def copy(self) -> Window:
        return Window(self.items.copy(), self.start)

    def last(self) -> Decimal:
        # Before the ring fills start is 0 and items[-1] is the latest; after, the latest is just before start.
        return self.items[self.start - 1]

    def leaving(self, size: int, replace: bool) -> Decimal | None:
        """The item ``put(x, size, replace)`` will drop: the latest when replacing, the oldest when full."""
        if replace:
            return self.last()
        return self.items[self.start] if len(self.items) == size else None

    def put(self, value: Decimal, size: int, replace: bool) -> None:
        if replace:
            self.items[self.start - 1] = value
        elif len(self.items) < size:
            self.items.append(value)
        else:
            self.items[self.start] = value
            self.start = (self.start + 1) % size

    def ordered(self) -> list[Decimal]:
        """Oldest first."""
        return self.items[self.start :] + self.items[: self.start]

    def problem(self, size: int) -> str | None:
        """Why this window cannot belong to an indicator of period ``size`` (a corrupt state), or None."""
        if len(self.items) > size:
            return f"window holds {len(self.items)} items, more than the period {size}"
        if not 0 <= self.start < max(len(self.items), 1) or (self.start and len(self.items) < size):
            return f"window start {self.start} is outside its {len(self.items)} items"
        return None


class Avg(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A seeded moving average after ``count`` inputs: their running sum while ``count < period``, their mean at
    ``count == period`` (the seed: the SMA of the first ``period`` inputs), then the smoothed average.

    Immutable, so an indicator can keep the accumulator from before the latest kline next to the current one and
    recompute the latest from it when that kline is revised.
    """

    count: int = 0
    value: Decimal = ZERO

    def ready(self, period: int) -> bool:
        return self.count >= period


def _seed(acc: Avg, x: Decimal, period: int) -> Avg | None:
    count = acc.count + 1
    if count < period:
        return Avg(count, acc.value + x)
    if count == period:
        return Avg(count, div(acc.value + x, period))
    return None


def ema(acc: Avg, x: Decimal, period: int) -> Avg:
    """Exponential smoothing, alpha = 2 / (period + 1), as one division: (2x + (n-1) prev) / (n+1)."""
    return _seed(acc, x, period) or Avg(acc.count + 1, div(2 * x + (period - 1) * acc.value, period + 1))


def wilder(acc: Avg, x: Decimal, period: int) -> Avg:
    """Wilder's smoothing (RSI, ATR), alpha = 1 / period: (x + (n-1) prev) / n."""
    return _seed(acc, x, period) or Avg(acc.count + 1, div(x + (period - 1) * acc.value, period))
