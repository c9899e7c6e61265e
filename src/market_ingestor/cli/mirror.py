"""``mirror``: the flat mirror of chosen batched topics (``bus/mirror.py``), until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import click

from market_ingestor.bus import open_bus
from market_ingestor.bus.mirror import flat_specs, mirror
from market_ingestor.bus.topics import PIPELINE_TOPICS, Topics, TopicSpec, prefixed
from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.config import Config
from market_ingestor.errors import ConfigError


@click.command("mirror")
@click.argument("topics", nargs=-1)
@pass_cli
def mirror_command(cli_ctx: CliContext, topics: tuple[str, ...]) -> None:
    """Copy every event of the batched TOPICS (default: market.trades) to TOPIC.flat, one keyed record each.

    For tools that need one record per event (Kafka Connect, ClickHouse's Kafka engine, ksqlDB); see
    docs/topics.md. Names are logical (without bus.topic_prefix). Ctrl-C/SIGTERM: flush, commit, exit 0.
    """
    run(_mirror(cli_ctx.config, topics or (Topics.TRADES,)))


def _specs(config: Config, topics: tuple[str, ...]) -> list[TopicSpec]:
    known = {spec.name: spec for spec in prefixed(PIPELINE_TOPICS, config.bus.topic_prefix)}
    specs = []
    for name in topics:
        spec = known.get(config.bus.topic_prefix + name)
        if spec is None:
            raise ConfigError(f"unknown topic {name!r}: one of {', '.join(Topics.ALL)}")
        specs.append(spec)
    return specs


async def _mirror(config: Config, topics: tuple[str, ...]) -> None:
    specs = _specs(config, topics)
    bus = open_bus(config.bus)
    await bus.ensure_topics([*prefixed(PIPELINE_TOPICS, config.bus.topic_prefix), *flat_specs(specs)])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    subscriber = bus.subscriber([spec.name for spec in specs], f"{config.streams.app_id}-mirror")
    publisher = bus.publisher()
    await publisher.start()
    try:
        await subscriber.start()
        deadletter = config.bus.topic_prefix + Topics.DEADLETTER
        copied = await mirror(subscriber, publisher, deadletter, stop, with_ids=bus.deduplicates_resends)
        click.echo(f"mirror stopped after {copied} events", err=True)
    finally:
        await subscriber.stop()
        await publisher.stop()
