"""The WebSocket push gateway (``market-ingestor push``): live trades, quotes, klines and indicators from the bus
to subscribed clients. The client protocol is documented in docs/push.md."""

from market_ingestor.push.gateway import Gateway, Verifier
from market_ingestor.push.metrics import PushMetrics

__all__ = ["Gateway", "PushMetrics", "Verifier"]
