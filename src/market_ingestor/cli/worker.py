"""``worker``: the Faust stream worker (klines today; indicators next)."""

from __future__ import annotations

from pathlib import Path

import click

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.cli.context import CliContext, pass_cli, run


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where this worker keeps its RocksDB tables [default: streams.data_dir]; one per worker process.",
)
@click.option("--web-port", type=int, default=None, help="Faust's web port [default: streams.web_port].")
@pass_cli
def worker(cli_ctx: CliContext, data_dir: Path | None, web_port: int | None) -> None:
    """Run the stream worker: trades -> klines (RocksDB tables, changelogs) until SIGINT/SIGTERM."""
    import faust  # heavy: only the worker needs it

    from market_ingestor.streams.app import build_app

    config = cli_ctx.config
    if config.bus.kind != "kafka":
        raise click.ClickException("the stream worker runs on Kafka/Redpanda (bus.kind = 'kafka'); NATS has no Faust")
    run(open_bus(config.bus).ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix)))
    app = build_app(config, data_dir, web_port)
    faust.Worker(
        app, loglevel=config.log.level.lower().replace("warning", "warn"), quiet=True
    ).execute_from_commandline()
