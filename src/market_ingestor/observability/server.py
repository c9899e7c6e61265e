"""``/metrics`` (Prometheus exposition of the process-wide registry) and ``/healthz`` over HTTP, for the services
that have no web app of their own: ingest and up, worker, sink, push, each on its section's ``metrics_port``.

The server runs on the service's own event loop (aiohttp), so ``/healthz`` answering at all also says the loop is
not blocked. ``/healthz`` is 200 with ``{"status": "ok", ...}`` while the service runs and 503 with
``{"status": "unavailable", ...}`` while it starts, stops or has failed; the other fields describe its
dependencies (connections, database, partitions) for an operator, without deciding health by them: an
exchange or a database being down is reported, not a reason to restart the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from market_ingestor.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    details: Mapping[str, Any] = field(default_factory=dict)


HealthCheck = Callable[[], Health]


def exposition(accept: str | None, registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The registry's metrics as (body, content type), in the format the scraper asked for (Prometheus text
    or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


async def metrics_response(request: web.Request) -> web.Response:
    # Rendering thousands of series takes tens of milliseconds (bench/metrics.py): in a thread, the service's
    # event loop keeps its turns (the GIL switches every few ms) instead of stalling for the whole scrape.
    # The collectors are safe to read from another thread (prometheus_client locks, Tally copies its dict).
    body, content_type = await asyncio.to_thread(exposition, request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def health_response(health: Health) -> web.Response:
    body = msgspec.json.encode({"status": "ok" if health.ok else "unavailable", **health.details})
    return web.Response(body=body, status=200 if health.ok else 503, content_type="application/json")


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` while started. ``setting`` names the config field of
    the port, for the error when it cannot be bound."""

    def __init__(self, host: str, port: int, health: HealthCheck, setting: str) -> None:
        self.host, self._port = host, port
        self.health = health
        self.setting = setting
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one picked for port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the metrics server is not started")
        port: int = self._runner.addresses[0][1]
        return port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot serve /metrics on {self.host}:{self._port}: {exc.strerror or exc}; another process may "
                f"hold the port: set {self.setting} (0 picks a free one)"
            ) from exc
        self._runner = runner
        log.info("metrics listening", extra={"host": self.host, "port": self.port, "setting": self.setting})

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _metrics(self, request: web.Request) -> web.Response:
        return await metrics_response(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return health_response(self.health())
