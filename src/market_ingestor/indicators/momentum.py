"""Momentum of the close: RSI (Wilder) and MACD (EMA difference with an EMA signal line).

Both are recursive, so each keeps its immutable accumulator from before the latest kline (``before``) next to
the current one: a revised latest kline is recomputed from ``before``, exactly as if it had come first.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from market_ingestor.indicators.base import Indicator, IndicatorSpecError, period
from market_ingestor.indicators.core import ZERO, Avg, div, ema, rounded, wilder
from market_ingestor.model import Kline

HUNDRED = Decimal(100)


class RsiAcc(msgspec.Struct, frozen=True, array_like=True, gc=False):
    close: Decimal | None = None  # the previous close; None before the first kline
    gain: Avg = Avg()  # Wilder average of the upward changes
    loss: Avg = Avg()  # ... and of the downward ones, as positive numbers


def rsi_step(acc: RsiAcc, close: Decimal, n: int) -> RsiAcc:
    if acc.close is None:  # the first close has no change yet
        return RsiAcc(close, acc.gain, acc.loss)
    change = close - acc.close
    gain, loss = (change, ZERO) if change > 0 else (ZERO, -change)
    return RsiAcc(close, wilder(acc.gain, gain, n), wilder(acc.loss, loss, n))


class RSI(Indicator, tag="rsi", kw_only=True):
    """Relative strength index with Wilder's smoothing: both averages are seeded with the plain mean of the first
    ``period`` changes, so the first value comes at the (period + 1)-th close.

    RSI = 100 * avg_gain / (avg_gain + avg_loss), the same as 100 - 100 / (1 + RS) with one division. When the
    average loss is 0 the RSI is 100, also when the average gain is 0 too (a series flat since its start): that is
    talipp's, the ``ta`` library's and TradingView's convention, so values match what users compare them with. An
    average loss only returns to 0 if no close has ever fallen, since Wilder's average never decays to zero.
    """

    PARAMS = (period(),)

    period: int
    before: RsiAcc = msgspec.field(default_factory=RsiAcc)
    current: RsiAcc = msgspec.field(default_factory=RsiAcc)

    @property
    def name(self) -> str:
        return f"rsi_{self.period}"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        before = self.before if replace else self.current
        self.before, self.current = before, rsi_step(before, kline.close, self.period)
        gain, loss = self.current.gain, self.current.loss
        if not gain.ready(self.period):
            return None
        if loss.value == 0:
            return {"value": HUNDRED}
        return {"value": div(HUNDRED * gain.value, gain.value + loss.value)}


class MacdAcc(msgspec.Struct, frozen=True, array_like=True, gc=False):
    fast: Avg = Avg()
    slow: Avg = Avg()
    signal: Avg = Avg()  # EMA of the MACD line, fed from the slow EMA's first value on
    macd: Decimal = ZERO  # fast - slow, once both are ready


class MACD(Indicator, tag="macd", kw_only=True):
    """MACD = EMA(fast) - EMA(slow) of the close; signal = EMA(signal) of MACD; hist = MACD - signal.

    Each EMA is seeded with the SMA of its first inputs (as talipp does), so the signal line starts at the
    (slow + signal - 1)-th close. Values are emitted only from then on, all three together, so every emitted
    value has the same keys (a sink can rely on them); the MACD line alone is not emitted during the signal's
    warm-up.
    """

    PARAMS = (period("fast"), period("slow"), period("signal"))
    OUTPUTS = ("macd", "signal", "hist")

    fast: int
    slow: int
    signal: int
    before: MacdAcc = msgspec.field(default_factory=MacdAcc)
    current: MacdAcc = msgspec.field(default_factory=MacdAcc)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast >= self.slow:
            raise IndicatorSpecError(f"macd fast period {self.fast} must be shorter than its slow period {self.slow}")

    @property
    def name(self) -> str:
        return f"macd_{self.fast}_{self.slow}_{self.signal}"

    def _step(self, acc: MacdAcc, close: Decimal) -> MacdAcc:
        fast, slow = ema(acc.fast, close, self.fast), ema(acc.slow, close, self.slow)
        if not slow.ready(self.slow):  # fast < slow, so the fast EMA is ready by then too
            return MacdAcc(fast, slow, acc.signal, acc.macd)
        macd = rounded(fast.value - slow.value)
        return MacdAcc(fast, slow, ema(acc.signal, macd, self.signal), macd)

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        before = self.before if replace else self.current
        self.before, self.current = before, self._step(before, kline.close)
        acc = self.current
        if not acc.signal.ready(self.signal):
            return None
        return {"macd": acc.macd, "signal": acc.signal.value, "hist": rounded(acc.macd - acc.signal.value)}
