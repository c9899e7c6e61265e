"""``up``: the whole pipeline in one process, and ``tail``: watch a topic.

Today the pipeline is the ingest service; the stream worker, sinks and push gateway join it as they land.
With ``--simulate`` the exchanges are the local simulator, so the demo needs no internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import click
import msgspec

from market_ingestor.bus import open_bus
from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config, ExchangeConfig
from market_ingestor.ingestor.service import IngestService, metrics_server
from market_ingestor.ingestor.simulator import DIALECTS, Simulator, SimulatorConfig

DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def _pointed_at(config: Config, sim: Simulator) -> Config:
    """The config with every exchange's endpoints on the simulator (and its symbols when none are set)."""
    exchanges = {}
    for name in sim.exchanges:
        current = config.exchanges.get(name, ExchangeConfig())
        exchanges[name] = msgspec.structs.replace(
            current,
            symbols=current.symbols or list(DEMO_SYMBOLS),
            ws_url=sim.ws_url(name),
            rest_url=sim.rest_url(name),
        )
    return msgspec.structs.replace(config, exchanges=exchanges)


async def _up(config: Config, simulate: bool, rate: float, port: int) -> None:  # float-ok: trades/s
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if not simulate:
        service = IngestService(config)
        async with metrics_server(config, service):
            await service.run(stop)
        return
    symbols = tuple(sorted({s for ex in config.exchanges.values() for s in ex.symbols} or DEMO_SYMBOLS))
    # The configured exchanges, or all of them when the config names none.
    exchanges = tuple(name for name, ex in config.exchanges.items() if ex.enabled) or tuple(DIALECTS)
    sim_config = SimulatorConfig(port=port, symbols=symbols, exchanges=exchanges, trades_per_s=rate)
    async with Simulator(sim_config) as sim:
        config = _pointed_at(config, sim)
        service = IngestService(config)
        async with metrics_server(config, service) as metrics:
            task = asyncio.create_task(service.run(stop))
            await service.ready.wait()
            _banner(config, sim, rate, metrics.port)
            await task


def _banner(config: Config, sim: Simulator, rate: float, metrics_port: int) -> None:  # float-ok: trades/s
    prefix = config.bus.topic_prefix
    click.echo(
        f"pipeline running on the simulator (port {sim.port}, {rate:g} trades/s over {', '.join(sim.exchanges)})\n"
        f"  bus: {config.bus.kind}; topics {prefix}market.trades, {prefix}market.quotes, {prefix}market.book\n"
        f"  metrics: http://127.0.0.1:{metrics_port}/metrics, health: /healthz\n"
        f"  watch it:  market-ingestor tail {prefix}market.trades\n"
        f"  add a symbol live:  market-ingestor symbols add binance XRPUSDT\n"
        f"Ctrl-C stops it (flushes everything first)."
    )


@click.command()
@click.option("--simulate/--live", default=False, help="Use the local exchange simulator instead of the exchanges.")
@click.option("--rate", type=float, default=200.0, show_default=True, help="Simulated trades per second in total.")
@click.option("--port", type=int, default=9100, show_default=True, help="The simulator's port.")
@pass_cli
def up(cli_ctx: CliContext, simulate: bool, rate: float, port: int) -> None:  # float-ok: trades/s
    """Run the whole pipeline until SIGINT/SIGTERM (ingest today; worker, sinks and push as they land)."""
    config = cli_ctx.config
    if not simulate and not any(ex.enabled for ex in config.exchanges.values()):
        raise click.ClickException("no exchange is configured: add [exchanges.NAME] sections, or use --simulate")
    run(_up(config, simulate, rate, port))


@click.command()
@click.argument("topic")
@click.option("--limit", "-n", type=int, default=None, help="Stop after this many records.")
@pass_cli
def tail(cli_ctx: CliContext, topic: str, limit: int | None) -> None:
    """Print TOPIC's records as JSON lines, from the beginning, following new ones (Ctrl-C stops)."""

    async def follow() -> None:
        subscriber = open_bus(cli_ctx.config.bus).follower([topic])
        await subscriber.start()
        printed = 0
        try:
            while limit is None or printed < limit:
                for delivery in await subscriber.fetch(max_records=1000, timeout_s=1.0):
                    sys.stdout.buffer.write(delivery.value + b"\n")
                    printed += 1
                    if limit is not None and printed >= limit:
                        break
                sys.stdout.flush()
        finally:
            await subscriber.stop()

    with contextlib.suppress(KeyboardInterrupt):
        run(follow())
