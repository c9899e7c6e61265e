"""The exchanges we connect to. Adding one: a module in this package defining ``SPEC``, one line here, its
simulator dialect in ``simulator/`` with one line in that registry, and its tests."""

from __future__ import annotations

from market_ingestor.errors import ConfigError
from market_ingestor.ingestor.exchanges.base import ALL_CHANNELS, Channel, ExchangeSpec, ParseContext

REGISTRY: dict[str, str] = {
    # name -> module defining SPEC; imported on first use so one exchange's import cost is paid only if used
    "binance": "market_ingestor.ingestor.exchanges.binance",
    "okx": "market_ingestor.ingestor.exchanges.okx",
    "bybit": "market_ingestor.ingestor.exchanges.bybit",
    "coinbase": "market_ingestor.ingestor.exchanges.coinbase",
    "kraken": "market_ingestor.ingestor.exchanges.kraken",
}


def get_spec(name: str) -> ExchangeSpec:
    import importlib

    try:
        module = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown exchange {name!r}: expected one of {', '.join(REGISTRY)}") from None
    spec: ExchangeSpec = importlib.import_module(module).SPEC
    return spec


__all__ = ["ALL_CHANNELS", "REGISTRY", "Channel", "ExchangeSpec", "ParseContext", "get_spec"]
