"""Process plumbing shared by every dev-stack server.

Servers are started detached (own session, stdin closed, output appended to a log file) so they outlive the
command that started them; a pidfile remembers them for the next ``up``/``down``/``status``. Everything here
is server-agnostic: Kafka, PostgreSQL and NATS only decide *what* to run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from market_ingestor.errors import DevStackError

logger = logging.getLogger(__name__)

# Children we spawned in this interpreter: keeping the Popen objects lets us reap them (no zombies that look
# alive to kill(pid, 0)) and avoids "subprocess still running" warnings when the objects are collected.
_children: dict[int, subprocess.Popen[bytes]] = {}


def log_tail(paths: Sequence[Path], lines: int = 40) -> str:
    """Return the last ``lines`` lines of each existing log, headed by its path, for error messages."""
    chunks = []
    for path in paths:
        try:
            with path.open("rb") as log:
                # Logs grow to megabytes; the last 64 KiB hold far more than ``lines`` lines.
                log.seek(max(0, path.stat().st_size - 65536))
                text = log.read().decode(errors="replace")
        except OSError:
            continue
        tail = "\n".join(text.splitlines()[-lines:])
        chunks.append(f"--- {path} (last {lines} lines) ---\n{tail}")
    return "\n".join(chunks)


def fail(message: str, logs: Sequence[Path] = ()) -> DevStackError:
    """Build a DevStackError whose message ends with the tail of the relevant logs."""
    tail = log_tail(logs)
    return DevStackError(f"{message}\n{tail}" if tail else message)


def spawn_detached(
    argv: Sequence[str],
    *,
    pidfile: Path,
    logfile: Path,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session with output appended to ``logfile``; record its pid in ``pidfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as log:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                # A new session: Ctrl-C in the starting terminal or the end of a test run must not kill it.
                start_new_session=True,
            )
        except OSError as exc:
            raise DevStackError(f"cannot start {argv[0]}: {exc}") from exc
    _children[proc.pid] = proc
    pidfile.write_text(f"{proc.pid}\n")
    logger.debug("started %s as pid %d", argv[0], proc.pid)
    return proc.pid


def run_tool(
    argv: Sequence[str], *, what: str, logfile: Path, timeout: float = 120.0, also_show: Sequence[Path] = ()
) -> None:
    """Run a short-lived helper (initdb, mvn, ...) to completion, its output appended to ``logfile``.

    On failure the error shows the tail of ``logfile`` and of ``also_show`` (e.g. the server log a
    ``pg_ctl start`` wrote to).
    """
    logs = [logfile, *also_show]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as log:
        try:
            result = subprocess.run(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise fail(f"{what} did not finish within {timeout:.0f}s", logs) from exc
        except OSError as exc:
            raise DevStackError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if result.returncode != 0:
        raise fail(f"{what} failed with exit code {result.returncode}", logs)


def read_pid(pidfile: Path) -> int | None:
    """The pid on the first line of ``pidfile`` (PostgreSQL's postmaster.pid has the same layout)."""
    try:
        first = pidfile.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return not _is_zombie(pid)


def runs_program(pid: int, program: str) -> bool:
    """True if ``pid``'s executable name contains ``program``; guards against pids reused after a reboot."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return not Path("/proc/self").exists()  # no procfs to ask: trust the pidfile
    return program in os.path.basename(argv0.decode(errors="replace"))


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to disappear; True if it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    _children.pop(pid, None)
    return True


def terminate(pid: int, *, grace_s: float = 15.0) -> None:
    """SIGTERM ``pid``'s process group, then SIGKILL it if it is still alive after ``grace_s`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            break
        logger.debug("sending %s to pid %d", sig.name, pid)
        _signal_group(pid, sig)
        if wait_for_exit(pid, wait):
            return
    if pid_alive(pid):
        raise DevStackError(f"pid {pid} survived SIGKILL")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # spawn_detached made each server a session (and group) leader, so the group takes its helpers along.
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    pid: int | None = None,
    logs: Sequence[Path] = (),
) -> None:
    """Poll ``ready`` until it holds; fail early with the log tail if ``pid`` dies, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not ready():
        if pid is not None and not pid_alive(pid):
            raise fail(f"{what} exited during startup", logs)
        if time.monotonic() >= deadline:
            raise fail(f"{what} did not become ready within {timeout:.0f}s", logs)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
