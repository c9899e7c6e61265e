"""The query API's web server with its database pool and control-panel monitor, started and stopped as one,
whatever runs the process (the Faust worker on Kafka, ``service.py``; a plain asyncio runner on NATS,
``service_nats.py``) and whatever feeds its ticker.

Pending schema migrations are applied at start when ``storage.migrate_on_start`` is set (the default); a database
that is down or refuses does not stop the API: ``/readyz`` reports it and queries answer 503 until it is back.
"""

from __future__ import annotations

import logging

from aiohttp import web

from market_ingestor.api.app import build_web_app
from market_ingestor.api.keys import KeyVerifier
from market_ingestor.api.monitor import PanelMonitor
from market_ingestor.api.store import Store
from market_ingestor.api.ticker_state import TickerView
from market_ingestor.config import Config
from market_ingestor.errors import StorageError
from market_ingestor.sinks.schema import migrate

log = logging.getLogger(__name__)


class ApiServer:
    """The aiohttp app on ``host:port`` between :meth:`start` and :meth:`stop`; the constructor does no I/O."""

    def __init__(self, config: Config, ticker: TickerView, host: str, port: int) -> None:
        self.config = config
        self.ticker = ticker
        self.host, self.port = host, port
        api = config.api
        self.store = Store(config.database.url, api.db_pool_size, api.query_timeout_s)
        self.monitor = PanelMonitor(config)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
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
            extra={"host": self.host, "port": self.port, "auth": api.auth_enabled, "bus": self.config.bus.kind},
        )

    async def _migrate(self) -> None:
        try:
            mode = await migrate(self.config.database.url, self.config.storage)
            log.info("schema up to date", extra={"mode": mode.value})
        except StorageError as exc:
            log.error("could not migrate the schema; serving anyway", extra={"reason": str(exc)})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()  # stops accepting, lets running requests finish
            self.runner = None
        await self.monitor.stop()
        await self.store.stop()
