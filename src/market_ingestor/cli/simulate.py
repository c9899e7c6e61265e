"""``simulate``: serve the local exchange simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import click

from market_ingestor.cli.context import run
from market_ingestor.errors import ConfigError
from market_ingestor.logs import configure_logging
from market_ingestor.simulator import DIALECTS, FaultConfig, ReplayConfig, Simulator, SimulatorConfig


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=9100, show_default=True, help="One port for every exchange; 0: any.")
@click.option("--symbols", default="BTCUSDT,ETHUSDT", show_default=True, help="Comma-separated normalized symbols.")
@click.option("--exchanges", default=",".join(DIALECTS), show_default=True, help="Comma-separated exchanges.")
@click.option("--rate", type=float, default=100.0, show_default=True, help="Trades per second over everything.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random-walk market.")
@click.option("--depth", type=int, default=25, show_default=True, help="Book levels per side.")
@click.option(
    "--replay",
    "replay_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve this recorded session to --exchange instead of the market (repeatable: a .ws file and its .0).",
)
@click.option("--exchange", "replay_exchange", default=None, help="The exchange whose clients get the --replay.")
@click.option("--speed", type=float, default=None, help="Replay at the recorded pace times this [default: no pause].")
@click.option("--drop-every-s", type=float, default=None, help="Fault: abort every connection this often.")
@click.option("--stall-every-s", type=float, default=None, help="Fault: stall the open sessions this often...")
@click.option("--stall-s", type=float, default=30.0, show_default=True, help="...for this long.")
@click.option("--malformed-every", type=int, default=None, help="Fault: a broken frame before every Nth data frame.")
@click.option("--gap-every", type=int, default=None, help="Fault: skip sequence numbers every N book updates.")
@click.option("--slow-send-ms", type=float, default=0.0, show_default=True, help="Fault: sleep before each frame.")
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append a line per trade, malformed frame and session start/end sent to this file (format: journal.py).",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def simulate(
    host: str,
    port: int,
    symbols: str,
    exchanges: str,
    rate: float,  # float-ok: a rate or a delay, not market data
    seed: int,
    depth: int,
    replay_files: tuple[Path, ...],
    replay_exchange: str | None,
    speed: float | None,  # float-ok: a rate or a delay, not market data
    drop_every_s: float | None,
    stall_every_s: float | None,
    stall_s: float,
    malformed_every: int | None,
    gap_every: int | None,
    slow_send_ms: float,  # float-ok: a rate or a delay, not market data
    journal: Path | None,
    log_level: str,
) -> None:
    """Serve a local simulator of the exchanges' WebSocket and REST APIs, on one port.

    Every exchange gets a seeded random-walk market of --symbols at --rate trades per second in total, or, with
    --replay and --exchange, a recorded session. Point the ingestor at the printed URLs. Runs until Ctrl-C.
    """
    if bool(replay_files) != bool(replay_exchange):
        raise click.UsageError("--replay and --exchange go together: which recording, served to which exchange")
    try:
        faults = FaultConfig(
            drop_every_s=drop_every_s,
            stall_every_s=stall_every_s,
            stall_s=stall_s,
            malformed_every=malformed_every,
            gap_every=gap_every,
            slow_send_ms=slow_send_ms,
        )
        replay = ReplayConfig(replay_exchange, replay_files, speed) if replay_exchange else None
        served = _names(exchanges)
        if replay_exchange and exchanges == ",".join(DIALECTS):
            served = (replay_exchange,)  # a replay alone unless other exchanges were asked for
        config = SimulatorConfig(
            host=host,
            port=port,
            symbols=_names(symbols),
            exchanges=served,
            trades_per_s=rate,
            seed=seed,
            book_depth=depth,
            faults=faults,
            replay=replay,
            journal=journal,
        )
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    configure_logging(log_level.upper(), "kv")
    run(_serve(config, click.echo))


async def _serve(config: SimulatorConfig, echo: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Simulator(config) as sim:
            echo(f"# simulator on {config.host}:{sim.port}; add to market-ingestor.toml:")
            for exchange in sim.exchanges:
                echo(f"[exchanges.{exchange}]")
                echo(f'ws_url = "{sim.ws_url(exchange)}"')
                echo(f'rest_url = "{sim.rest_url(exchange)}"')
                if sim.instruments(exchange):
                    echo(f"symbols = {json.dumps(list(config.symbols))}")  # a JSON array of strings is TOML too
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
