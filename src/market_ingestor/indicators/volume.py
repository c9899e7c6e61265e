"""Volume: the session VWAP."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from market_ingestor.indicators.base import Indicator
from market_ingestor.indicators.core import ZERO, div
from market_ingestor.model import Kline

DAY_NS = 86_400 * 10**9


class VwapAcc(msgspec.Struct, frozen=True, array_like=True, gc=False):
    session: int = -1  # the UTC day (days since the epoch) the sums belong to; -1 before the first kline
    quote_volume: Decimal = ZERO  # exact sum over the session's klines
    volume: Decimal = ZERO  # exact sum over the session's klines


def vwap_step(acc: VwapAcc, kline: Kline) -> VwapAcc:
    session = kline.open_time // DAY_NS
    if session != acc.session:
        return VwapAcc(session, kline.quote_volume, kline.volume)
    return VwapAcc(session, acc.quote_volume + kline.quote_volume, acc.volume + kline.volume)


class VWAP(Indicator, tag="vwap", kw_only=True):
    """Volume-weighted average price of the UTC day so far: sum(quote_volume) / sum(volume) over the klines that
    opened since the last UTC midnight, the latest included. It is the true traded VWAP (each kline's quote
    volume is the sum of price * qty of its trades), not the typical-price approximation (h + l + c) / 3 that
    libraries computing from OHLCV alone use.

    Sessions by interval: a kline belongs to the day it opens in. Intervals under a day (1m .. 12h) divide the day,
    so no kline straddles midnight and the VWAP accumulates through the day and restarts with its first kline.
    For 1d and longer every kline opens on a new day, so each is its own session and the VWAP is that kline's own
    quote_volume / volume. None (nothing emitted) while the session has no volume yet, e.g. a quiet first minute.
    """

    before: VwapAcc = msgspec.field(default_factory=VwapAcc)  # the sums before the latest kline
    current: VwapAcc = msgspec.field(default_factory=VwapAcc)  # ... and after it

    @property
    def name(self) -> str:
        return "vwap"

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        before = self.before if replace else self.current
        self.before, self.current = before, vwap_step(before, kline)
        if self.current.volume == 0:
            return None
        return {"value": div(self.current.quote_volume, self.current.volume)}
