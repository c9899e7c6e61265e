"""What the ingestors should subscribe to: the config's static lists, changed at runtime by the commands on
the compacted control topic. Folding is a pure function, so the CLI, the ingest service and tests agree."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import msgspec

from market_ingestor.config import Config
from market_ingestor.errors import SymbolError
from market_ingestor.ingestor.exchanges import REGISTRY
from market_ingestor.model import ControlCommand

KNOWN_EXCHANGES: tuple[str, ...] = tuple(REGISTRY)
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}(-[A-Z0-9]{1,12})?$")

Subscriptions = dict[str, frozenset[str]]


class ControlState(msgspec.Struct, frozen=True):
    """Which exchanges are enabled and which symbols each one carries.

    The two are kept apart on purpose: every command then decides one key's state alone (an exchange's
    switch, or one symbol), so the compacted topic, which keeps only the latest command per key, folds to the
    same state as the full history. Disabling an exchange keeps its symbols for when it is enabled again.
    """

    enabled: frozenset[str]
    symbols: dict[str, frozenset[str]]

    def subscriptions(self) -> Subscriptions:
        return {name: self.symbols.get(name, frozenset()) for name in sorted(self.enabled)}


def check_exchange(name: str) -> str:
    if name not in KNOWN_EXCHANGES:
        raise SymbolError(f"unknown exchange {name!r}: expected one of {', '.join(KNOWN_EXCHANGES)}")
    return name


def check_symbol(symbol: str) -> str:
    """A normalized symbol (``BTCUSDT``, ``BTCUSD-PERP``); the exchange's own listing is checked on subscribe."""
    if not _SYMBOL_RE.match(symbol):
        raise SymbolError(
            f"malformed symbol {symbol!r}: expected upper-case BASEQUOTE such as BTCUSDT (optionally -SUFFIX)"
        )
    return symbol


def command(action: str, target: str, exchange: str, symbol: str | None = None) -> ControlCommand:
    check_exchange(exchange)
    if target == "symbol":
        if symbol is None:
            raise SymbolError("a symbol command needs a symbol")
        check_symbol(symbol)
    return ControlCommand(
        action=action,  # type: ignore[arg-type]
        target=target,  # type: ignore[arg-type]
        exchange=exchange,
        symbol=symbol,
        ts=time.time_ns(),
    )


def initial_state(config: Config) -> ControlState:
    return ControlState(
        enabled=frozenset(name for name, ex in config.exchanges.items() if ex.enabled),
        symbols={name: frozenset(ex.symbols) for name, ex in config.exchanges.items()},
    )


def fold(state: ControlState, commands: Iterable[ControlCommand]) -> ControlState:
    enabled = set(state.enabled)
    symbols = dict(state.symbols)
    for cmd in commands:
        if cmd.target == "exchange":
            (enabled.add if cmd.action == "add" else enabled.discard)(cmd.exchange)
        elif cmd.symbol is not None:
            current = symbols.get(cmd.exchange, frozenset())
            symbols[cmd.exchange] = current | {cmd.symbol} if cmd.action == "add" else current - {cmd.symbol}
    return ControlState(enabled=frozenset(enabled), symbols=symbols)
