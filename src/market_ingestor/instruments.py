"""Instruments and symbol normalization.

Every exchange names instruments its own way (``BTC-USDT``, ``btcusdt``, ``XBT/USD``, ``tBTCUSD``). The
pipeline uses one form: upper-case BASEQUOTE (``BTCUSDT``), with asset aliases folded (XBT -> BTC,
XDG -> DOGE) and, for derivatives, a suffix after a dash (``BTCUSD-PERP``, ``BTCUSD-220527``).

Where a name has no delimiter (Binance ``btcusdt``) the split into base and quote cannot be guessed from
string length (``BTCUSDT`` vs ``BTCUSD`` + ``T``?), so it comes from the exchange's instrument listing, held
in an :class:`InstrumentRegistry`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import msgspec

from market_ingestor.errors import SymbolError

# Legacy or exchange-specific asset codes and the names the rest of the world uses.
ASSET_ALIASES: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}

InstrumentKind = Literal["spot", "perpetual", "future", "option"]

_ASSET_RE = re.compile(r"^[A-Z0-9]{1,20}$")
_DELIMITED_RE = re.compile(r"^([A-Za-z0-9]+)[-/_:]([A-Za-z0-9]+)$")


def normalize_asset(code: str) -> str:
    """``xbt`` -> ``BTC``; raises :class:`SymbolError` for anything that is not an asset code."""
    upper = code.strip().upper()
    if not _ASSET_RE.match(upper):
        raise SymbolError(f"not an asset code: {code!r} (expected 1-20 letters or digits)")
    return ASSET_ALIASES.get(upper, upper)


def make_symbol(base: str, quote: str, suffix: str = "") -> str:
    """The normalized symbol for a base/quote pair: ``make_symbol("xbt", "usd") == "BTCUSD"``."""
    symbol = normalize_asset(base) + normalize_asset(quote)
    return f"{symbol}-{suffix.upper()}" if suffix else symbol


def split_delimited(native: str) -> tuple[str, str]:
    """Split a spot name that carries its own delimiter (``BTC-USDT``, ``XBT/USD``, ``btc_usdt``).

    Raises :class:`SymbolError` for undelimited names: those need the instrument registry.
    """
    match = _DELIMITED_RE.match(native.strip())
    if match is None:
        raise SymbolError(f"cannot split {native!r} into base and quote without the exchange's instrument listing")
    return normalize_asset(match.group(1)), normalize_asset(match.group(2))


class Instrument(msgspec.Struct, frozen=True):
    exchange: str
    native: str  # the exchange's own name, as used in its subscribe frames
    base: str
    quote: str
    kind: InstrumentKind = "spot"
    suffix: str = ""  # "PERP" or an expiry such as "220527" for derivatives

    @property
    def symbol(self) -> str:
        return make_symbol(self.base, self.quote, self.suffix)


class InstrumentRegistry:
    """The instruments an exchange lists, looked up by native name or by normalized symbol."""

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self._by_native: dict[tuple[str, str], Instrument] = {}
        self._by_symbol: dict[tuple[str, str], Instrument] = {}
        # Goes up with every add: a cache of lookups compares one int per frame to know it is still current.
        self.version = 0
        for instrument in instruments:
            self.add(instrument)

    def add(self, instrument: Instrument) -> None:
        # Native names are matched case-insensitively: Binance streams use lower case, REST upper case.
        self._by_native[(instrument.exchange, instrument.native.upper())] = instrument
        self._by_symbol[(instrument.exchange, instrument.symbol)] = instrument
        self.version += 1

    def __len__(self) -> int:
        return len(self._by_native)

    def by_native(self, exchange: str, native: str) -> Instrument:
        try:
            return self._by_native[(exchange, native.upper())]
        except KeyError:
            raise SymbolError(f"{exchange} lists no instrument named {native!r}") from None

    def by_symbol(self, exchange: str, symbol: str) -> Instrument:
        try:
            return self._by_symbol[(exchange, symbol.upper())]
        except KeyError:
            raise SymbolError(f"unknown symbol {symbol!r} on {exchange}: not in its instrument listing") from None

    def symbols(self, exchange: str) -> list[str]:
        return sorted(symbol for (name, symbol) in self._by_symbol if name == exchange)

    def normalize(self, exchange: str, native: str) -> str:
        """Native name -> normalized symbol, from the registry, else from a delimiter in the name."""
        instrument = self._by_native.get((exchange, native.upper()))
        if instrument is not None:
            return instrument.symbol
        base, quote = split_delimited(native)
        return make_symbol(base, quote)
