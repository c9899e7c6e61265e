"""The live ticker's state and its update rule, whatever feeds it (pure: no I/O, no bus).

:class:`TickerState` is the latest trade and best bid/ask of one instrument; "latest" is by exchange time (a late
trade never replaces a newer one), ties going to the later arrival. :class:`TickerUpdates` folds records of the
trades and quotes topics (each a JSON array of events, ``bus/records.py``) into the new states of the instruments
they touch, skipping malformed events. :class:`TickerView` is what the web handlers read.

Two feeders use them: the Faust ``GlobalTable`` on Kafka (``ticker.py``) and the JetStream followers on NATS
(``ticker_nats.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec

from market_ingestor.bus.records import BatchDecoder
from market_ingestor.model import Quote, Trade

log = logging.getLogger(__name__)


class TickerState(msgspec.Struct, frozen=True):
    trade: Trade | None = None
    quote: Quote | None = None

    def updated(self, event: Trade | Quote) -> TickerState:
        if isinstance(event, Trade):
            if self.trade is None or event.ts >= self.trade.ts:
                return TickerState(event, self.quote)
        elif self.quote is None or (event.ts, event.seq or 0) >= (self.quote.ts, self.quote.seq or 0):
            return TickerState(self.trade, event)
        return self


class TickerView(Protocol):
    """What the web handlers read."""

    @property
    def recovered(self) -> bool:
        """True once the ticker holds what was current before this instance started."""

    def get(self, key: str) -> TickerState | None:
        """The state of ``{exchange}.{symbol}``."""

    def instruments(self) -> Iterable[str]:
        """Every ``{exchange}.{symbol}`` held."""


class MemoryTicker:
    """A plain dict with the same view: the seam for handler tests that need no bus."""

    def __init__(self, states: dict[str, TickerState] | None = None) -> None:
        self.states = dict(states or {})
        self.recovered = True

    def get(self, key: str) -> TickerState | None:
        return self.states.get(key)

    def instruments(self) -> Iterable[str]:
        return list(self.states)


_events: BatchDecoder[Trade | Quote] = BatchDecoder(Trade | Quote)  # type: ignore[arg-type]


class TickerUpdates:
    """Folds trade and quote records into ticker states; counts the malformed events it skips."""

    def __init__(self) -> None:
        self.malformed = 0

    def fold(self, values: Iterable[bytes], current: Callable[[str], TickerState | None]) -> dict[str, TickerState]:
        """The new state of every instrument the records ``values`` (in order) touch; ``current(key)`` gives an
        instrument's state before them (None: nothing seen yet)."""
        touched: dict[str, TickerState] = {}
        for value in values:
            for event in self.events(value):
                key = f"{event.exchange}.{event.symbol}"
                state = touched.get(key) or current(key) or TickerState()
                touched[key] = state.updated(event)
        return touched

    def events(self, value: bytes) -> list[Trade | Quote]:
        """The events of one record; a bad one is skipped (the worker dead-letters them), the rest are kept."""
        try:
            events: list[Trade | Quote] = _events.decode(value)
            return events
        except msgspec.MsgspecError:
            events, bad = _events.split(value)
        previous, self.malformed = self.malformed, self.malformed + len(bad)
        if previous == 0 or self.malformed // 1000 > previous // 1000:  # a flood must not become a log flood
            log.warning("ticker skipped malformed events", extra={"reason": bad[0][1], "count": self.malformed})
        return events
