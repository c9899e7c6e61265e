"""``market-ingestor api``: one process running the Faust ticker app and the aiohttp query API next to it.

Pending schema migrations are applied at start when ``storage.migrate_on_start`` is set (the default). The Faust
worker owns the process: it handles SIGINT/SIGTERM, stops every service in order and exits 0. The web
server is one of its services, started before the Faust app so that ``/healthz`` answers (and ``/readyz`` says
"recovering") while the ticker table is still being read; Faust's own web server stays off.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import faust
from aiohttp import web
from mode import Service

from market_ingestor.api.app import build_web_app
from market_ingestor.api.keys import KeyVerifier
from market_ingestor.api.monitor import PanelMonitor
from market_ingestor.api.store import Store
from market_ingestor.api.ticker import TickerView, build_ticker_app
from market_ingestor.config import Config
from market_ingestor.errors import StorageError
from market_ingestor.sinks.schema import migrate

log = logging.getLogger(__name__)


class WebService(Service):
    """The aiohttp app and its database pool, as a mode service."""

    def __init__(self, config: Config, ticker: TickerView, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.ticker = ticker
        self.host, self.port = host, port
        api = config.api
        self.store = Store(config.database.url, api.db_pool_size, api.query_timeout_s)
        self.monitor = PanelMonitor(config)
        self.runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        api = self.config.api
        if self.config.storage.migrate_on_start:
            await self._migrate()
        await self.store.start()
        await self.monitor.start()
        verifier = KeyVerifier(self.store.pool, api.key_cache_ttl_s, api.key_cache_size) if api.auth_enabled else None
        app = build_web_app(self.config, self.store, self.ticker, verifier, self.monitor)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        log.info(
            "query API listening (control panel at /panel/)",
            extra={"host": self.host, "port": self.port, "auth": api.auth_enabled, "ticker_app": self.ticker_app_id},
        )

    async def _migrate(self) -> None:
        """Pending migrations (the api_keys table among them); a database that is down or refuses does not stop
        the API: ``/readyz`` reports it and queries answer 503 until it is back."""
        try:
            mode = await migrate(self.config.database.url, self.config.storage)
            log.info("schema up to date", extra={"mode": mode.value})
        except StorageError as exc:
            log.error("could not migrate the schema; serving anyway", extra={"reason": str(exc)})

    @property
    def ticker_app_id(self) -> str:
        return f"{self.config.streams.app_id}-api"

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()  # stops accepting, lets running requests finish
        await self.monitor.stop()
        await self.store.stop()


def run(config: Config, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; returns (exit status 0) after a clean stop."""
    with tempfile.TemporaryDirectory(prefix="market-ingestor-api-") as scratch:
        app, ticker = build_ticker_app(config, scratch)
        web_service = WebService(config, ticker, host, port)
        level = config.log.level.lower().replace("warning", "warn")
        # override_logging=False: Faust's lines go through our structured formatter, not its own handler.
        faust.Worker(app, web_service, loglevel=level, quiet=True, override_logging=False).execute_from_commandline()
