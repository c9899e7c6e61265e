"""The local exchange simulator: every exchange's WebSocket and REST API, served from one port, driven by a
seeded random-walk market (or a recorded session), with fault injection for tests.

Adding an exchange: its dialect module in this package defining ``DIALECT`` (see ``dialect.py``) and one line
in :data:`DIALECTS`.
"""

from __future__ import annotations

import importlib

from market_ingestor.errors import ConfigError
from market_ingestor.simulator.dialect import (
    ClientRequest,
    SimBook,
    SimBookDelta,
    SimDialect,
    SimInstrument,
    SimQuote,
    SimTrade,
)

DIALECTS: dict[str, str] = {
    # name -> module defining DIALECT; imported on first use, like the exchanges' REGISTRY
    "binance": "market_ingestor.simulator.binance",
    "okx": "market_ingestor.simulator.okx",
    "bybit": "market_ingestor.simulator.bybit",
    "coinbase": "market_ingestor.simulator.coinbase",
    "kraken": "market_ingestor.simulator.kraken",
}


def get_dialect(name: str) -> SimDialect:
    try:
        module = DIALECTS[name]
    except KeyError:
        raise ConfigError(f"the simulator has no exchange {name!r}: expected one of {', '.join(DIALECTS)}") from None
    try:
        dialect: SimDialect = importlib.import_module(module).DIALECT
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ConfigError(f"the simulator's {name} dialect ({module}) is not installed in this version") from exc
    return dialect


# The server reads DIALECTS when it is imported, so these come after the registry.
from market_ingestor.simulator.faults import FaultConfig, MalformedKind, corrupt  # noqa: E402
from market_ingestor.simulator.market import KNOWN_QUOTES, Market, StepResult, instrument_for  # noqa: E402
from market_ingestor.simulator.replay import Recording, ReplayConfig  # noqa: E402
from market_ingestor.simulator.server import Simulator, SimulatorConfig  # noqa: E402
from market_ingestor.simulator.venue import SentTrades, SimStats  # noqa: E402

__all__ = [
    "DIALECTS",
    "KNOWN_QUOTES",
    "ClientRequest",
    "FaultConfig",
    "MalformedKind",
    "Market",
    "Recording",
    "ReplayConfig",
    "SentTrades",
    "SimBook",
    "SimBookDelta",
    "SimDialect",
    "SimInstrument",
    "SimQuote",
    "SimStats",
    "SimTrade",
    "Simulator",
    "SimulatorConfig",
    "StepResult",
    "corrupt",
    "get_dialect",
    "instrument_for",
]
