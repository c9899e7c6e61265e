"""The other services of ``up --with``: each one a child process running its own command (``worker``, ``sink``,
``push``, ``api``) with the same config, because the Faust services own their process (signals, event loop).

A child that exits on its own stops the whole ``up`` (the operator sees which and with what status); on Ctrl-C
every child gets SIGTERM, which each service answers with its own graceful shutdown, and is killed only if it has
not exited within ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import click

SERVICES: tuple[str, ...] = ("worker", "sink", "push", "api")
STOP_TIMEOUT_S = 60.0  # float-ok: a duration


def parse_services(text: str) -> tuple[str, ...]:
    """``"worker,api"`` -> ("worker", "api"); ``"all"`` -> every service; unknown names are refused."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return SERVICES
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        raise click.BadParameter(f"unknown service(s) {', '.join(unknown)}: expected some of {', '.join(SERVICES)}")
    return tuple(dict.fromkeys(names))


class Children:
    def __init__(self, names: tuple[str, ...], config_path: Path | None, env: dict[str, str]) -> None:
        self.names = names
        self.command = [sys.executable, "-m", "market_ingestor.cli.main"]
        if config_path is not None:
            self.command += ["--config", str(config_path)]
        self.env = {**os.environ, **env}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.failed: str | None = None  # the first child that exited on its own, and how

    async def start(self) -> None:
        for name in self.names:
            self.processes[name] = await asyncio.create_subprocess_exec(*self.command, name, env=self.env)

    async def watch(self, stop: asyncio.Event) -> None:
        """Returns (setting ``stop``) when a child exits on its own; one that exits after ``stop`` is not a failure."""
        waits = {asyncio.ensure_future(process.wait()): name for name, process in self.processes.items()}
        if not waits:
            return
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        name = waits[next(iter(done))]
        if not stop.is_set():  # Ctrl-C in a terminal reaches the children too: their exit is then expected
            self.failed = f"{name} exited with status {self.processes[name].returncode}"
        stop.set()

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                click.echo(f"{name} did not stop within {STOP_TIMEOUT_S:g} s: killed", err=True)
                process.kill()
                await process.wait()
