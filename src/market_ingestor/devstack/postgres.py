"""Throwaway PostgreSQL clusters for the dev stack: plain (or ``$DATABASE_URL``) and with TimescaleDB.

:class:`PostgresServer` is plain PostgreSQL, built with the machine's own ``initdb``/``pg_ctl``; it never
preloads TimescaleDB, so the partitioned storage mode always has a server to run on. :class:`TimescaleServer`
runs a second cluster from a private copy of the installation with TimescaleDB added (built once from the
vendored source, :mod:`.timescaledb_build`) and ``shared_preload_libraries = 'timescaledb'``; where it cannot be
built it stays down and ``dev status`` says why. PostgreSQL refuses to run as root, so under root every
server-side command runs as an unprivileged user (``postgres`` if it exists, else a created system user
``market-ingestor``) via ``runuser``. Durability is traded for speed (fsync off): this is dev data only.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from market_ingestor.devstack import timescaledb_build
from market_ingestor.devstack.config import HOST
from market_ingestor.devstack.process import (
    fail,
    pid_alive,
    read_pid,
    run_tool,
    runs_program,
    terminate,
    wait_for_exit,
)
from market_ingestor.devstack.server import LocalServer, Status
from market_ingestor.errors import DevStackError

logger = logging.getLogger(__name__)

DATABASE = "market_ingestor"
USER = "market_ingestor"
_FALLBACK_OS_USER = "market-ingestor"
_INITIALIZED_MARKER = ".initialized"


class PostgresServer(LocalServer):
    name = "postgres"
    external_env = "DATABASE_URL"
    program = "postgres"
    stop_grace_s = 30.0

    @property
    def port(self) -> int:
        return self.config.postgres_port

    @property
    def local_kind(self) -> str:
        return "postgresql"

    def local_url(self) -> str:
        return f"postgresql://{USER}@{HOST}:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def running_pid(self) -> int | None:
        # Without the marker the first start never got as far as creating the database: not reusable.
        if not (self.home / _INITIALIZED_MARKER).exists():
            return None
        return super().running_pid()

    def bin_dir(self) -> Path:
        """Where this cluster's server programs are (built or copied first where needed)."""
        return _bin_dir()

    def settings(self) -> dict[str, str]:
        """postgresql.conf settings beyond the dev stack's common ones."""
        return {}

    def _launch(self, timeout: float) -> int:
        bin_dir = self.bin_dir()
        os_user = _os_user()
        if not (self.home / _INITIALIZED_MARKER).exists():
            self._init_cluster(bin_dir, os_user)
        self._write_settings(bin_dir, os_user)
        self._remove_stale_locks()
        start = [str(bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.logs[0])]
        run_tool(
            _as_user(os_user, [*start, "-w", "-t", str(int(timeout))]),
            what="pg_ctl start",
            logfile=self.home / "pg_ctl.log",
            timeout=timeout + 10,
            also_show=self.logs,
        )
        if not (self.home / _INITIALIZED_MARKER).exists():
            self._create_database(bin_dir)
        pid = read_pid(self.pidfile)
        if pid is None:
            raise fail("pg_ctl reported success but postmaster.pid has no pid", self.logs)
        return pid

    def _remove_stale_locks(self) -> None:
        # PostgreSQL only asks kill(pid, 0), which a killed postmaster's zombie still passes when PID 1 is slow
        # to reap; we know better (ensure() already replaced any live one), so drop its stale lock files.
        for lock in [self.pidfile, *(self.home / "run").glob(".s.PGSQL.*.lock")]:
            pid = read_pid(lock)
            if pid is not None and not (pid_alive(pid) and runs_program(pid, self.program)):
                logger.info("postgres: removing %s of dead pid %d", lock.name, pid)
                lock.unlink(missing_ok=True)

    def _init_cluster(self, bin_dir: Path, os_user: str | None) -> None:
        # A data dir without the marker is a half-done earlier attempt: start over rather than guess.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        self.logs[0].touch()
        _give_to(os_user, self.home)
        _require_reachable(os_user, self.home)
        initdb = [
            str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", USER,
            "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions",
        ]  # fmt: skip
        run_tool(_as_user(os_user, initdb), what="initdb", logfile=self.home / "initdb.log")
        # Trust is fine only because the server listens on loopback alone (see _write_settings).
        (self.data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'devstack.conf'\n")
        _give_to(os_user, self.data_dir)

    def _write_settings(self, bin_dir: Path, os_user: str | None) -> None:
        # Rewritten on every start so a changed port offset or moved state dir takes effect.
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.home / "run"),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **self.settings(),
        }
        text = "".join(f"{key} = '{_quote(value)}'\n" for key, value in settings.items())
        path = self.data_dir / "devstack.conf"
        path.write_text(text)
        _give_to(os_user, path)

    def _create_database(self, bin_dir: Path) -> None:
        createdb = [str(bin_dir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", USER, DATABASE]
        run_tool(createdb, what=f"createdb {DATABASE}", logfile=self.home / "initdb.log")
        (self.home / _INITIALIZED_MARKER).touch()

    def _shutdown(self, pid: int) -> None:
        # The system's pg_ctl stops a cluster of the private copy too (same major): no build or copy on the way out.
        stop = [str(_bin_dir() / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30"]
        try:
            run_tool(_as_user(_os_user(), stop), what="pg_ctl stop", logfile=self.home / "pg_ctl.log", timeout=40)
        except DevStackError as exc:
            logger.warning("postgres: %s; signalling pid %d directly", exc, pid)
        # pg_ctl returns when the pidfile is gone; make sure the postmaster and its children really are.
        if pid_alive(pid) and not wait_for_exit(pid, 5.0):
            terminate(pid, grace_s=self.stop_grace_s)


class TimescaleServer(PostgresServer):
    """A second cluster whose installation has TimescaleDB and whose server preloads it."""

    name = "timescaledb"
    external_env = "TIMESCALEDB_URL"

    @property
    def port(self) -> int:
        return self.config.timescaledb_port

    @property
    def local_kind(self) -> str:
        return f"postgresql+timescaledb-{timescaledb_build.TIMESCALEDB_VERSION}"

    def unavailable(self) -> str | None:
        """Why there is no local TimescaleDB server on this machine, or None."""
        if self.external_url:
            return None
        try:
            return timescaledb_build.missing(_bin_dir())
        except DevStackError as exc:
            return str(exc)

    def bin_dir(self) -> Path:
        return timescaledb_build.private_installation(_bin_dir(), self.home / "pg")

    def settings(self) -> dict[str, str]:
        # Every database with the extension gets a job scheduler, a background worker of its own; test sessions
        # make dozens of databases.
        return {
            "shared_preload_libraries": "timescaledb",
            "timescaledb.telemetry_level": "off",
            "max_worker_processes": "64",
            "timescaledb.max_background_workers": "48",
        }

    def ensure(self, timeout: float = 120.0) -> bool:
        reason = self.unavailable()
        if reason is not None:
            logger.warning("timescaledb: not started: %s", reason)
            return False
        return super().ensure(timeout)

    def status(self) -> Status:
        reason = None if self.live_pid() is not None else self.unavailable()
        if reason is not None:
            return {self.url_key: None, "kind": "unavailable", "running": False, "reason": reason}
        return super().status()


def _bin_dir() -> Path:
    """The newest PostgreSQL server bin directory: PATH first, then Debian's versioned directories."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True)
    candidates.extend(Path(path) for path in debian)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "createdb")):
            return directory
    raise DevStackError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
        "apt-get install postgresql, or set DATABASE_URL"
    )


def _major_version(bin_path: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,); unparsable names sort first."""
    version = Path(bin_path).parent.name
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return ()


def _os_user() -> str | None:
    """The OS user to run server commands as, or None to run them as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    logger.info("postgres: creating system user %s to run PostgreSQL (it refuses root)", _FALLBACK_OS_USER)
    useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_OS_USER]
    result = subprocess.run(useradd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise DevStackError(f"cannot create user {_FALLBACK_OS_USER}: {result.stderr.strip()}")
    return _FALLBACK_OS_USER


def _as_user(os_user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", os_user, "--", *argv] if os_user else argv


def _give_to(os_user: str | None, path: Path) -> None:
    """Hand ``path`` (recursively) to ``os_user``; nothing to do when we run unprivileged."""
    if os_user is None:
        return
    record = pwd.getpwnam(os_user)
    paths = [path]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            paths.extend(Path(root, name) for name in dirs + files)
    for item in paths:
        os.chown(item, record.pw_uid, record.pw_gid, follow_symlinks=False)


def _require_reachable(os_user: str | None, directory: Path) -> None:
    # initdb's own message would only say "permission denied"; name the fix instead.
    if os_user is None:
        return
    probe = subprocess.run(["runuser", "-u", os_user, "--", "test", "-w", str(directory)], check=False)
    if probe.returncode != 0:
        raise DevStackError(
            f"PostgreSQL runs as OS user {os_user!r}, which cannot reach {directory}: make its parent "
            "directories world-searchable (chmod o+x) or put MARKET_INGESTOR_DEVSTACK_DIR elsewhere"
        )


def _quote(value: str) -> str:
    return value.replace("'", "''")
