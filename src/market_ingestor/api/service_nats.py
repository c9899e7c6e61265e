"""``market-ingestor api`` on NATS JetStream: the query API's web server (``server.py``) and the JetStream ticker
(``ticker_nats.py``) in one asyncio process, without Faust (on Kafka, ``service.py`` runs them under Faust).

Start: the web server first, so that ``/healthz`` answers (and ``/readyz`` says "recovering") while the ticker
reads the latest record of every instrument; then the ticker. SIGINT/SIGTERM: the ticker stops taking records and
drops its consumers, the web server stops accepting and lets running requests finish, the database pool and the
panel's followers close, and the process exits 0. A ticker that fails in a way it cannot retry (a bug) stops the
process with the error, for its supervisor to restart it, instead of leaving a replica that serves a frozen
ticker.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from market_ingestor.api.server import ApiServer
from market_ingestor.api.ticker_nats import NatsTicker
from market_ingestor.config import Config
from market_ingestor.errors import ours_in

log = logging.getLogger(__name__)


async def serve(config: Config, host: str, port: int, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or until ``stop`` is set, when given: then no signal handler is installed)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    ticker = NatsTicker(config)
    server = ApiServer(config, ticker, host, port)
    try:
        await server.start()
        await ticker.start()
        async with asyncio.TaskGroup() as group:
            follow = group.create_task(ticker.run(), name="nats-ticker")
            await stop.wait()
            log.info("query API stopping")
            follow.cancel()
    except ExceptionGroup as group:  # from the task group: report our error plainly
        ours = ours_in(group)
        if ours is not None:
            raise ours from group
        raise
    finally:
        await ticker.stop()
        await server.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)
