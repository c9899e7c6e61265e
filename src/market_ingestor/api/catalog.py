"""Which instruments the API knows: those with stored rows (read from the database at most every
``symbols_refresh_s``) and those in the live ticker.

A request for an instrument not in either looks at the database once more before answering 404 (at most once a
second, whatever the number of such requests), so rows stored a moment ago are found without waiting for the
next refresh, and a flood of unknown symbols costs no more than one query a second.
"""

from __future__ import annotations

import asyncio
import time

from market_ingestor.api.render import SymbolOut
from market_ingestor.api.store import Store
from market_ingestor.api.ticker_state import TickerView
from market_ingestor.errors import RequestError

MISS_REFRESH_S = 1.0


class Catalog:
    def __init__(self, store: Store, ticker: TickerView, refresh_s: float) -> None:  # float-ok: seconds
        self._store = store
        self._ticker = ticker
        self._refresh_s = refresh_s
        self._stored: set[tuple[str, str]] = set()
        self._read_at = -float("inf")  # float-ok: monotonic seconds
        self._lock = asyncio.Lock()

    async def stored(self, max_age_s: float) -> set[tuple[str, str]]:  # float-ok: seconds
        if time.monotonic() - self._read_at > max_age_s:
            async with self._lock:  # one query for all the requests that find the list too old
                if time.monotonic() - self._read_at > max_age_s:
                    self._stored = await self._store.instruments()
                    self._read_at = time.monotonic()
        return self._stored

    async def require(self, exchange: str, symbol: str, parameter: str = "symbol") -> None:
        """Raises 404 naming ``exchange.symbol`` when no data and no ticker exists for it."""
        key = (exchange, symbol)
        if self._ticker.get(f"{exchange}.{symbol}") is not None:
            return
        if key in await self.stored(self._refresh_s) or key in await self.stored(MISS_REFRESH_S):
            return
        raise RequestError(f"unknown symbol {exchange}.{symbol}: no stored data and no live ticker", parameter, 404)

    async def listing(self) -> list[SymbolOut]:
        stored = await self.stored(self._refresh_s)
        live = {_pair(key) for key in self._ticker.instruments()}
        return [
            SymbolOut(
                exchange, symbol, f"{exchange}.{symbol}", (exchange, symbol) in stored, (exchange, symbol) in live
            )
            for exchange, symbol in sorted(stored | live)
        ]


def _pair(key: str) -> tuple[str, str]:
    exchange, _, symbol = key.partition(".")
    return exchange, symbol
