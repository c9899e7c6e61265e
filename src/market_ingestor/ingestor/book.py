"""A local L2 book per instrument, and the integrity checks that decide when it must be resynchronized.

The connection loop feeds every BookSnapshot/BookDelta through a :class:`BookSync`; it answers whether the
update continues the book (the exchange's sequence rule) and whether the resulting book matches the checksum
the exchange sent. Pure logic: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from enum import StrEnum

from sortedcontainers import SortedDict

from market_ingestor.ingestor.exchanges.base import ChecksumFn, SequenceRule
from market_ingestor.model import BookDelta, BookSnapshot, Level


def level_text(value: Decimal) -> str:
    """A decimal as the exchange wrote it: plain digits with its trailing zeros, never exponent notation."""
    return format(value, "f")


class OrderBook:
    """Price levels of one instrument. Bids are kept under negated prices so both sides iterate best first."""

    __slots__ = ("_asks", "_bids")

    def __init__(self) -> None:
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def apply_snapshot(self, bids: Sequence[Level], asks: Sequence[Level]) -> None:
        self.clear()
        self.apply_levels(bids, asks)

    def apply_levels(self, bids: Sequence[Level], asks: Sequence[Level]) -> None:
        for price, qty in bids:
            self._set(self._bids, -price, price, qty)
        for price, qty in asks:
            self._set(self._asks, price, price, qty)

    @staticmethod
    def _set(side: SortedDict, key: Decimal, price: Decimal, qty: Decimal) -> None:
        if qty == 0:
            side.pop(key, None)
        else:
            side[key] = (price, qty)

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        bids = [self._bids.peekitem(i)[1] for i in range(min(depth, len(self._bids)))]
        asks = [self._asks.peekitem(i)[1] for i in range(min(depth, len(self._asks)))]
        return bids, asks

    def top_text(self, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids, asks = self.top(depth)
        return (
            [(level_text(p), level_text(q)) for p, q in bids],
            [(level_text(p), level_text(q)) for p, q in asks],
        )

    @property
    def best_bid(self) -> Level | None:
        return self._bids.peekitem(0)[1] if self._bids else None

    @property
    def best_ask(self) -> Level | None:
        return self._asks.peekitem(0)[1] if self._asks else None

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)


class BookVerdict(StrEnum):
    OK = "ok"
    WAITING = "waiting"  # no snapshot yet: the delta is held back (or dropped) until one arrives
    STALE = "stale"  # the delta is older than the book (Binance's buffered updates): skip it, no gap
    GAP = "gap"  # a sequence number is missing: resync
    CHECKSUM = "checksum"  # the book disagrees with the exchange's checksum: resync


class BookSync:
    """Applies one instrument's book updates and checks them against the exchange's rules."""

    def __init__(self, sequence: SequenceRule | None, checksum: ChecksumFn | None, checksum_depth: int = 0) -> None:
        self.sequence = sequence
        self.checksum = checksum
        self.checksum_depth = checksum_depth
        self.book = OrderBook()
        self.last_seq: int | None = None
        self.synced = False

    def reset(self) -> None:
        self.book.clear()
        self.last_seq = None
        self.synced = False

    def on_snapshot(self, snapshot: BookSnapshot) -> BookVerdict:
        self.book.apply_snapshot(snapshot.bids, snapshot.asks)
        self.last_seq = snapshot.seq
        self.synced = True
        return self._verify(snapshot.checksum)

    def on_delta(self, delta: BookDelta) -> BookVerdict:
        if not self.synced:
            return BookVerdict.WAITING
        if self.sequence is not None and self.last_seq is not None and delta.last_seq is not None:
            if delta.last_seq <= self.last_seq and delta.prev_seq is None:
                return BookVerdict.STALE
            if not self.sequence(self.last_seq, delta):
                return BookVerdict.GAP
        self.book.apply_levels(delta.bids, delta.asks)
        if delta.last_seq is not None:
            self.last_seq = delta.last_seq
        return self._verify(delta.checksum)

    def _verify(self, expected: int | None) -> BookVerdict:
        if self.checksum is None or expected is None:
            return BookVerdict.OK
        bids, asks = self.book.top_text(self.checksum_depth)
        return BookVerdict.OK if self.checksum(bids, asks) == expected else BookVerdict.CHECKSUM
