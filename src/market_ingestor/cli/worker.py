"""``worker``: the stream worker (klines and indicators): Faust on Kafka/Redpanda, JetStream on NATS."""

from __future__ import annotations

from pathlib import Path

import click

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.streams.memory import set_mmap_threshold, tune_cycle_collector


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
    """Run the stream worker: trades -> klines -> indicators until SIGINT/SIGTERM.

    On Kafka/Redpanda a Faust app with RocksDB tables and changelogs; on NATS (bus.kind = "nats") the same
    aggregation with its state in JetStream key-value buckets, the work shared by shard leases (--data-dir and
    --web-port do not apply there).
    """
    set_mmap_threshold(cli_ctx.config.streams.malloc_mmap_threshold_bytes)
    tune_cycle_collector()
    if cli_ctx.config.bus.kind == "nats":
        from market_ingestor.streams.nats_worker import run_worker

        run(run_worker(cli_ctx.config))
        return
    from market_ingestor.bus.faust.app import faust_worker
    from market_ingestor.streams.app import build_app, worker_metrics  # heavy (Faust): only the worker needs it
    from market_ingestor.streams.outputs import mark_clean_stop, prepare_data_dir

    config = cli_ctx.config
    run(open_bus(config.bus).ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix)))
    directory = data_dir or Path(config.streams.data_dir)
    prepare_data_dir(directory, exactly_once=config.streams.processing_guarantee == "exactly_once")
    app = build_app(config, directory, web_port)
    try:
        faust_worker(app, worker_metrics(app, config), log_level=config.log.level).execute_from_commandline()
    except SystemExit as exc:
        if app.agent_failure is not None:  # stopped because an agent failed (logged): not a clean stop
            raise SystemExit(1) from app.agent_failure
        if exc.code in (0, None):
            mark_clean_stop(directory)
        raise
