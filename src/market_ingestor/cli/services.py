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

from market_ingestor.cli.status import console_line

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
    """The child processes. With ``log_dir``, each one's output goes to ``log_dir/NAME.log`` and only its warnings
    and errors to the console (``status.console_line``); without, it shares this process's stdout and stderr."""

    def __init__(
        self, names: tuple[str, ...], config_path: Path | None, env: dict[str, str], log_dir: Path | None = None
    ) -> None:
        self.names = names
        self.command = [sys.executable, "-m", "market_ingestor.cli.main"]
        if config_path is not None:
            self.command += ["--config", str(config_path)]
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._copies: list[asyncio.Task[None]] = []
        self.failed: str | None = None  # the first child that exited on its own, and how

    def log_path(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    async def start(self) -> None:
        for name in self.names:
            if self.log_dir is None:
                self.processes[name] = await asyncio.create_subprocess_exec(*self.command, name, env=self.env)
                continue
            process = await asyncio.create_subprocess_exec(
                *self.command, name, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            self.processes[name] = process
            assert process.stdout is not None
            self._copies.append(asyncio.create_task(self._copy(name, process.stdout), name=f"up-{name}-log"))

    async def _copy(self, name: str, output: asyncio.StreamReader) -> None:
        """Every line of a child's output into its log file; its warnings and errors to the console too."""
        path = self.log_path(name)
        assert path is not None
        with path.open("w", encoding="utf-8") as file:
            while line := await output.readline():
                decoded = line.decode("utf-8", "replace")
                file.write(decoded)
                file.flush()
                shown = console_line(name, decoded)
                if shown is not None:
                    click.echo(shown, err=True)

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
            if self.log_dir is not None:
                self.failed += f" (its log: {self.log_path(name)})"
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
        await asyncio.gather(*self._copies, return_exceptions=True)  # the output ends with the process
