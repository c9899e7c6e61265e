"""What every command shares: the config, loaded once and only by the commands that need it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from market_ingestor.config import Config, load_config
from market_ingestor.errors import MarketIngestorError
from market_ingestor.logs import configure_logging

T = TypeVar("T")


class CliContext:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except MarketIngestorError as exc:
                raise click.ClickException(str(exc)) from exc
            configure_logging(self._config.log.level, self._config.log.format)
        return self._config


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a command's coroutine; our errors become a one-line message and exit status 1, not a traceback."""
    try:
        return asyncio.run(coro)
    except MarketIngestorError as exc:
        raise click.ClickException(str(exc)) from exc


pass_cli = click.make_pass_decorator(CliContext)
