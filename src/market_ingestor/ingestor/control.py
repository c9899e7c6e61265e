"""What the ingestors should subscribe to: the config's static lists, changed at runtime by the commands on
the compacted control topic. Folding is a pure function, so the CLI, the ingest service, the control panel and
tests agree; sending a command and reading the topic back are here too, for the CLI and the panel alike."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

import msgspec

from market_ingestor.bus import PIPELINE_TOPICS, Delivery, Publisher, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import Config
from market_ingestor.errors import SymbolError
from market_ingestor.ingestor.exchanges import REGISTRY
from market_ingestor.model import ControlCommand, decode, encode

log = logging.getLogger(__name__)

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


# --- the control topic ----------------------------------------------------------------------------------------


def control_topic(config: Config) -> str:
    return config.bus.topic_prefix + Topics.CONTROL


def commands_in(deliveries: Iterable[Delivery]) -> list[ControlCommand]:
    """The control commands among these records; anything else is skipped with a warning (someone else's bytes
    on our topic must not take the control plane down)."""
    commands = []
    for delivery in deliveries:
        try:
            event = decode(delivery.value)
        except msgspec.MsgspecError as exc:
            log.warning(
                "skipped a record that is not a control command",
                extra={"topic": delivery.topic, "position": delivery.position, "error": str(exc)},
            )
            continue
        if isinstance(event, ControlCommand):
            commands.append(event)
    return commands


async def send_command(config: Config, cmd: ControlCommand, publisher: Publisher | None = None) -> None:
    """Publishes ``cmd`` and returns once the broker has it; with no ``publisher``, one is opened for it."""
    if publisher is not None:
        await publisher.publish(control_topic(config), bus_key(cmd), encode(cmd), msg_id=event_id(cmd))
        await publisher.flush()
        return
    bus = open_bus(config.bus)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix))
    own = bus.publisher()
    await own.start()
    try:
        await send_command(config, cmd, own)
    finally:
        await own.stop()


async def read_state(config: Config) -> ControlState:
    """The configured state with every command on the control topic applied."""
    bus = open_bus(config.bus)
    await bus.ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix))
    return fold(initial_state(config), commands_in(await bus.read_topic(control_topic(config))))
