"""``sink``: the bus topics -> PostgreSQL/TimescaleDB service."""

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
    help="Faust's data directory for this sink process [default: sink.data_dir] (Kafka only).",
)
@pass_cli
def sink(cli_ctx: CliContext, data_dir: Path | None) -> None:
    """Store trades, klines and indicator values (and quotes with storage.store_quotes) until SIGINT/SIGTERM.

    Batches of up to sink.batch_size rows, or what arrived within sink.flush_interval_s, are written in one
    transaction each; their offsets are committed only after that. While the database is down the sink retries
    with backoff and stops consuming; nothing is lost or stored twice.
    """
    from market_ingestor.sinks.persist import Backoff, migrate_when_available

    config = cli_ctx.config
    if config.storage.migrate_on_start:
        backoff = Backoff(config.sink.retry_initial_s, config.sink.retry_max_s)
        run(migrate_when_available(config.database.url, config.storage, backoff))
    if config.bus.kind == "nats":
        from market_ingestor.sinks.bus_sink import run_bus_sink

        run(run_bus_sink(config))
        return
    import faust  # heavy: only the Kafka sink needs it

    from market_ingestor.sinks.service import SinkApp
    from market_ingestor.sinks.writer import RowWriter

    run(open_bus(config.bus).ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix)))
    sink_app = SinkApp(config, RowWriter(config.database.url, config.storage), data_dir)
    # override_logging=False: Faust's lines go through our structured formatter, not its own handler.
    faust.Worker(sink_app.app, sink_app.metrics, quiet=True, override_logging=False).execute_from_commandline()
