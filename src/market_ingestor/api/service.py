"""``market-ingestor api`` on Kafka: one process running the Faust ticker app and the aiohttp query API next to it
(on NATS, ``service_nats.py`` runs the same server without Faust).

The Faust worker owns the process: it handles SIGINT/SIGTERM, stops every service in order and exits 0. The web
server (``server.py``) is one of its services, started before the Faust app so that ``/healthz`` answers (and
``/readyz`` says "recovering") while the ticker table is still being read; Faust's own web server stays off.
"""

from __future__ import annotations

import tempfile
from typing import Any

from mode import Service

from market_ingestor.api.server import ApiServer
from market_ingestor.api.ticker import build_ticker_app
from market_ingestor.api.ticker_state import TickerView
from market_ingestor.bus.faust.app import faust_worker
from market_ingestor.config import Config


class WebService(Service):
    """The :class:`ApiServer` as a mode service."""

    def __init__(self, config: Config, ticker: TickerView, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server = ApiServer(config, ticker, host, port)

    async def on_start(self) -> None:
        await self.server.start()

    async def on_stop(self) -> None:
        await self.server.stop()


def run(config: Config, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; returns (exit status 0) after a clean stop."""
    with tempfile.TemporaryDirectory(prefix="market-ingestor-api-") as scratch:
        app, ticker = build_ticker_app(config, scratch)
        web_service = WebService(config, ticker, host, port)
        faust_worker(app, web_service, log_level=config.log.level).execute_from_commandline()
