"""``api``: the query API service; ``apikeys create|list|revoke``: the keys it accepts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TypeVar

import asyncpg
import click
import msgspec

from market_ingestor.api.keys import create_key, list_keys, revoke_key
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.topics import prefixed
from market_ingestor.cli.context import CliContext, pass_cli, run
from market_ingestor.errors import MarketIngestorError

T = TypeVar("T")


@click.command()
@click.option("--port", type=int, default=None, help="Listen on this port [default: api.port].")
@click.option("--host", default=None, help="Listen on this address [default: api.host].")
@pass_cli
def api(cli_ctx: CliContext, port: int | None, host: str | None) -> None:
    """Serve the query API (REST over the stored data, live ticker) until SIGINT/SIGTERM.

    On Kafka the ticker is a Faust table; on NATS every instance follows the latest record of each instrument."""
    config = cli_ctx.config
    run(open_bus(config.bus).ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix)))
    host, port = host or config.api.host, port or config.api.port
    if config.bus.kind == "nats":
        from market_ingestor.api import service_nats

        run(service_nats.serve(config, host, port))
        return
    from market_ingestor.api import service  # heavy (Faust): only this command on Kafka needs it

    service.run(config, host, port)


def _with_db(url: str, action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def go() -> T:
        try:
            connection = await asyncpg.connect(url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise MarketIngestorError(f"cannot connect to the database: {exc}") from exc
        try:
            return await action(connection)
        except asyncpg.UndefinedTableError as exc:
            raise MarketIngestorError(f"{exc}: run `market-ingestor db migrate` first") from exc
        finally:
            await connection.close()

    return run(go())


@click.group()
def apikeys() -> None:
    """Create, list and revoke the query API's keys (stored hashed; a key is shown once)."""


@apikeys.command()
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--rate-limit", type=click.IntRange(min=1), default=None, help="Requests/s [default: api.rate_limit_per_s]."
)
@click.option("--burst", type=click.IntRange(min=1), default=None, help="Burst size [default: api.rate_limit_burst].")
@pass_cli
def create(cli_ctx: CliContext, name: str, rate_limit: int | None, burst: int | None) -> None:
    """Create a key and print it (the only time it is shown)."""
    created = _with_db(cli_ctx.config.database.url, lambda db: create_key(db, name, rate_limit, burst))
    click.echo(f"id:   {created.id}\nname: {created.name}\nkey:  {created.key}")
    click.echo("Keep the key now: it is stored hashed and cannot be shown again.", err=True)


@apikeys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@pass_cli
def list_(cli_ctx: CliContext, as_json: bool) -> None:
    """List keys: id, name, created, revoked, rate limit (never the secret)."""
    records = _with_db(cli_ctx.config.database.url, list_keys)
    if as_json:
        for record in records:
            click.echo(msgspec.json.encode(record).decode())
        return
    click.echo(f"{'id':<12}  {'name':<24}  {'created (UTC)':<20}  {'revoked (UTC)':<20}  rate/s  burst")
    for r in records:
        revoked = f"{r.revoked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if r.revoked_at else "-"
        click.echo(
            f"{r.id:<12}  {r.name:<24}  {r.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}  {revoked:<20}  "
            f"{r.rate_limit_per_s or '-':<6}  {r.rate_limit_burst or '-'}"
        )


@apikeys.command()
@click.argument("key_id")
@pass_cli
def revoke(cli_ctx: CliContext, key_id: str) -> None:
    """Revoke key KEY_ID; API instances refuse it within api.key_cache_ttl_s."""
    if not _with_db(cli_ctx.config.database.url, lambda db: revoke_key(db, key_id)):
        raise click.ClickException(f"no active key {key_id!r} (see `market-ingestor apikeys list`)")
    seconds = cli_ctx.config.api.key_cache_ttl_s
    click.echo(f"revoked {key_id}; running API instances refuse it within {seconds:g} s")
