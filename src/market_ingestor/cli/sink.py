"""``sink``: the bus topics -> PostgreSQL/TimescaleDB service."""

from __future__ import annotations

import click

from market_ingestor.cli.context import CliContext, pass_cli, run


@click.command()
@pass_cli
def sink(cli_ctx: CliContext) -> None:
    """Store trades, klines and indicator values (and quotes with storage.store_quotes) until SIGINT/SIGTERM.

    Batches of up to sink.batch_size rows, or what arrived within sink.flush_interval_s, are written in one
    transaction each; their records are committed only after that. While the database is down the sink retries
    with backoff and stops consuming; nothing is lost or stored twice. On Kafka and on NATS alike.
    """
    from market_ingestor.sinks.persist import migrate_when_available, outage_retry
    from market_ingestor.sinks.service import run_sink

    config = cli_ctx.config
    if config.storage.migrate_on_start:
        run(migrate_when_available(config.database.url, config.storage, outage_retry(config.sink)))
    run(run_sink(config))
