"""``up``: the whole pipeline from one command, and ``tail``: watch a topic.

``up`` runs the ingest service in this process and, with ``--with``, the other services (worker, sink, push, api)
as child processes on the same config. With ``--simulate`` the exchanges are the local simulator, so the demo
needs no internet; the children are told the simulator's endpoints through the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import click
import msgspec

from market_ingestor.bus import open_bus
from market_ingestor.bus.records import split_events
from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.cli.services import SERVICES, Children, parse_services
from market_ingestor.cli.status import STATUS_INTERVAL_S, ConsoleFormatter, Status, log_dir
from market_ingestor.config import ENV_PREFIX, Config, ExchangeConfig
from market_ingestor.ingestor.service import IngestService, metrics_server
from market_ingestor.logs import configure_logging
from market_ingestor.simulator import DIALECTS, Simulator, SimulatorConfig

DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
# Listed by the simulator but not subscribed: there to be added live (`symbols add`, the control panel).
SPARE_SYMBOLS = ("XRPUSDT", "DOGEUSDT")


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


def _started(
    config: Config,
    sim: Simulator | None,
    rate: float,  # float-ok: trades/s
    services: tuple[str, ...],
    metrics_port: int,
    logs: Path | None = None,
) -> str:
    prefix = config.bus.topic_prefix
    where = "the exchanges"
    if sim is not None:
        where = f"the simulator (port {sim.port}, {rate:g} trades/s over {', '.join(sim.exchanges)})"
    lines = [
        f"pipeline running on {where}",
        f"  bus: {config.bus.kind}; topics {prefix}market.trades, {prefix}market.quotes, {prefix}market.book",
        f"  metrics: http://127.0.0.1:{metrics_port}/metrics, health: /healthz (ingest)",
    ]
    if services:
        lines.append(f"  services: {', '.join(services)} (child processes, same config)")
    if "api" in services:
        lines.append(f"  control panel: http://127.0.0.1:{config.api.port}/panel/")
    if "push" in services:
        lines.append(f"  push gateway: ws://127.0.0.1:{config.push.port}/")
    if logs is not None:
        names = ", ".join(f"{name}.log" for name in ("ingest", *services))
        lines.append(f"  logs: {_shown(logs)}/ ({names}); here: a status line every {STATUS_INTERVAL_S:g} s, warnings")
    lines += [
        f"  watch it:  market-ingestor tail {prefix}market.trades",
        "  add a symbol live:  market-ingestor symbols add binance XRPUSDT",
        "Ctrl-C stops it (flushes everything first).",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _log_to_files(config: Config) -> Path:
    """This process's log (ingest, the simulator) into ``ingest.log`` of :func:`log_dir`, warnings and errors
    also to the console; the children's go beside it (``Children``)."""
    directory = log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(ConsoleFormatter("ingest"))
    configure_logging(config.log.level, config.log.format, path=directory / "ingest.log", console=console)
    return directory


def _metrics_ports(config: Config, services: tuple[str, ...], ingest_port: int) -> dict[str, int]:
    """Where the status line reads each running service's /metrics (a service on port 0 is left out)."""
    ports = {"ingest": ingest_port}
    for name, port in (
        ("worker", config.streams.metrics_port),
        ("sink", config.sink.metrics_port),
        ("push", config.push.metrics_port),
    ):
        if name in services and port:
            ports[name] = port
    return ports


async def _up(
    config: Config,
    config_path: Path | None,
    simulate: bool,
    rate: float,  # float-ok: trades/s
    port: int,
    services: tuple[str, ...],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logs = _log_to_files(config)
    async with contextlib.AsyncExitStack() as stack:
        env: dict[str, str] = {}
        sim: Simulator | None = None
        if simulate:
            symbols = tuple(sorted({s for ex in config.exchanges.values() for s in ex.symbols} or DEMO_SYMBOLS))
            # The configured exchanges, or all of them when the config names none.
            exchanges = tuple(name for name, ex in config.exchanges.items() if ex.enabled) or tuple(DIALECTS)
            listed = tuple(dict.fromkeys(symbols + SPARE_SYMBOLS))
            sim_config = SimulatorConfig(port=port, symbols=listed, exchanges=exchanges, trades_per_s=rate)
            sim = await stack.enter_async_context(Simulator(sim_config))
            config = _pointed_at(config, sim)
            # The children must see the same exchanges (the API folds the control topic onto them).
            env[f"{ENV_PREFIX}EXCHANGES"] = msgspec.json.encode(config.exchanges).decode()
        children = Children(services, config_path, env, logs)
        stack.push_async_callback(children.stop)
        await children.start()
        service = IngestService(config)
        metrics = await stack.enter_async_context(metrics_server(config, service))
        ingesting = asyncio.create_task(service.run(stop), name="up-ingest")
        watching = asyncio.create_task(children.watch(stop), name="up-children")
        ready = asyncio.create_task(service.ready.wait(), name="up-ready")
        status: asyncio.Task[object] = asyncio.create_task(asyncio.Event().wait(), name="up-status")  # until ready
        try:
            # An ingest service that fails while starting (no broker) ends here with its error, not a hang.
            await asyncio.wait([ready, ingesting], return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                click.echo(_started(config, sim, rate, services, metrics.port, logs))
                status.cancel()
                status = asyncio.create_task(
                    Status(_metrics_ports(config, services, metrics.port)).run(), name="up-status"
                )
            await ingesting
        finally:
            for task in (ready, watching, ingesting, status):
                task.cancel()
            await asyncio.gather(ready, watching, ingesting, status, return_exceptions=True)
    if children.failed is not None:
        raise click.ClickException(f"stopped: {children.failed}")


@click.command()
@click.option("--simulate/--live", default=False, help="Use the local exchange simulator instead of the exchanges.")
@click.option("--rate", type=float, default=200.0, show_default=True, help="Simulated trades per second in total.")
@click.option("--port", type=int, default=9100, show_default=True, help="The simulator's port.")
@click.option(
    "--with",
    "with_",
    default="",
    metavar="SERVICES",
    help=f"Also run these services as child processes: comma-separated {', '.join(SERVICES)}, or all.",
)
@pass_cli
def up(cli_ctx: CliContext, simulate: bool, rate: float, port: int, with_: str) -> None:  # float-ok: trades/s
    """Run the pipeline until SIGINT/SIGTERM: ingest, and the services named by --with."""
    services = parse_services(with_)
    config = cli_ctx.config
    if not simulate and not any(ex.enabled for ex in config.exchanges.values()):
        raise click.ClickException("no exchange is configured: add [exchanges.NAME] sections, or use --simulate")
    run(_up(config, cli_ctx.config_path, simulate, rate, port, services))


@click.command()
@click.argument("topic")
@click.option("--limit", "-n", type=int, default=None, help="Stop after this many events.")
@pass_cli
def tail(cli_ctx: CliContext, topic: str, limit: int | None) -> None:
    """Print TOPIC's events as JSON lines, one per line, from the beginning, following new ones (Ctrl-C stops).

    A record of a hot topic holds many events (docs/topics.md): each is printed on its own line."""

    async def follow() -> None:
        subscriber = open_bus(cli_ctx.config.bus).follower([topic])
        await subscriber.start()
        printed = 0
        try:
            while limit is None or printed < limit:
                for delivery in await subscriber.fetch(max_records=100, timeout_s=1.0):
                    try:
                        events = split_events(delivery.value)
                    except msgspec.DecodeError:
                        events = [delivery.value]  # not JSON: printed as it is
                    if limit is not None:
                        events = events[: limit - printed]
                    sys.stdout.buffer.write(b"".join(event + b"\n" for event in events))
                    printed += len(events)
                    if limit is not None and printed >= limit:
                        break
                sys.stdout.flush()
        finally:
            await subscriber.stop()

    with contextlib.suppress(KeyboardInterrupt):
        run(follow())
