"""TimescaleDB for the dev stack: built once from the vendored source, installed into a private PostgreSQL copy.

No TimescaleDB package exists in the package sources the project uses, so the dev stack builds the unmodified
release tarball ``../shared/vendor/timescaledb-<version>.tar.gz`` (next to the work tree; ``$MARKET_INGESTOR_
TIMESCALEDB_SOURCE`` names another path) against the machine's PostgreSQL server headers. The build output is
cached in ``~/.cache/market-ingestor/timescaledb-<version>-pg<minor>/`` (a new PostgreSQL minor or release means
a new build), so only the first ``dev up`` on a machine pays the 2-5 minutes.

The extension is never installed into the system directories: a cluster of the system installation that does
not preload it would answer every extension check with a FATAL ``must be preloaded`` (see the vendor README).
Instead :func:`private_installation` copies the PostgreSQL installation (bin, lib, share; ~50 MB) into the dev
stack's state dir, mirroring the system paths under a new root, and adds the extension's files. PostgreSQL finds
its lib and share directories relative to its own executable, so the copy runs as a separate installation.

Without the source, a compiler, cmake or the server headers there is no TimescaleDB: :func:`missing` says why,
and the dev stack keeps its plain PostgreSQL (``dev status`` shows the reason).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from market_ingestor.devstack.kafka_dist import cache_root
from market_ingestor.devstack.process import fail, run_tool
from market_ingestor.errors import DevStackError

logger = logging.getLogger(__name__)

TIMESCALEDB_VERSION = "2.28.3"
# sha256 of the release tarball (/work/shared/vendor/README.md): we build only the unmodified source.
TIMESCALEDB_SHA256 = "ec2f7de0ba53a473c01e0a57e09053898c6b1f7487228caff0f1d31c8cb2dedb"
ENV_SOURCE = "MARKET_INGESTOR_TIMESCALEDB_SOURCE"
#: "off" keeps the dev stack on plain PostgreSQL even where TimescaleDB could be built.
ENV_SWITCH = "MARKET_INGESTOR_TIMESCALEDB"

_TARBALL = f"timescaledb-{TIMESCALEDB_VERSION}.tar.gz"
_COMPLETE = ".complete"
_BUILD_TIMEOUT_S = 1800.0
_CMAKE_OPTIONS = [
    "-DREGRESS_CHECKS=OFF",
    "-DTAP_CHECKS=OFF",
    "-DWARNINGS_AS_ERRORS=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DSEND_TELEMETRY_DEFAULT=OFF",  # a dev cluster must not phone home
]


@dataclass(frozen=True)
class PgInstallation:
    """The directories ``pg_config`` reports for a PostgreSQL installation, and its version."""

    bindir: Path
    pkglibdir: Path
    sharedir: Path
    version: str  # "15.20"

    @classmethod
    def of(cls, bin_dir: Path) -> PgInstallation:
        pg_config = bin_dir / "pg_config"
        if not pg_config.is_file():
            raise DevStackError(f"{pg_config} not found (Debian: apt-get install postgresql-server-dev-<major>)")
        info = _pg_config(pg_config, "--bindir", "--pkglibdir", "--sharedir", "--version")
        match = re.search(r"PostgreSQL (\d+(?:\.\d+)?)", info[3])
        if match is None:
            raise DevStackError(f"cannot read the PostgreSQL version from {info[3]!r}")
        return cls(Path(info[0]), Path(info[1]), Path(info[2]), match.group(1))

    @property
    def major(self) -> str:
        return self.version.split(".")[0]


def source_tarball() -> Path | None:
    """The vendored release tarball: ``$MARKET_INGESTOR_TIMESCALEDB_SOURCE``, else ``../shared/vendor/`` beside
    the work tree this package runs from, else beside the current directory."""
    explicit = os.environ.get(ENV_SOURCE)
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() else None
    repo = Path(__file__).resolve().parents[3]  # src/market_ingestor/devstack/ -> the work tree (editable install)
    for base in (repo, Path.cwd()):
        candidate = base.parent / "shared" / "vendor" / _TARBALL
        if candidate.is_file():
            return candidate
    return None


def missing(bin_dir: Path) -> str | None:
    """Why TimescaleDB cannot be built or used here, or None when it can."""
    if os.environ.get(ENV_SWITCH, "").lower() in {"off", "0", "false", "no"}:
        return f"turned off by ${ENV_SWITCH}"
    if (bin_dir.parent / "lib" / "timescaledb.so").exists() or _cached_build(bin_dir) is not None:
        return None
    if source_tarball() is None:
        where = os.environ.get(ENV_SOURCE) or f"../shared/vendor/{_TARBALL} beside the work tree"
        return f"no TimescaleDB source ({where} not found); plain PostgreSQL only"
    tools = [tool for tool in ("cmake", "make", "cc") if shutil.which(tool) is None]
    if tools:
        return f"cannot build TimescaleDB: {', '.join(tools)} missing (Debian: apt-get install cmake build-essential)"
    try:
        pg = PgInstallation.of(bin_dir)
    except DevStackError as exc:
        return f"cannot build TimescaleDB: {exc}"
    headers = Path(_pg_config(bin_dir / "pg_config", "--includedir-server")[0])
    if not (headers / "postgres.h").is_file():
        package = f"postgresql-server-dev-{pg.major}"
        return f"cannot build TimescaleDB: no server headers in {headers} (apt-get install {package})"
    return None


def _cache_dir(pg: PgInstallation) -> Path:
    return cache_root() / f"timescaledb-{TIMESCALEDB_VERSION}-pg{pg.version}"


def _cached_build(bin_dir: Path) -> Path | None:
    try:
        pg = PgInstallation.of(bin_dir)
    except DevStackError:
        return None
    stage = _cache_dir(pg) / "stage"
    return stage if (stage / _COMPLETE).exists() else None


def built_extension(bin_dir: Path) -> Path:
    """The staged files of TimescaleDB built for the installation of ``bin_dir`` (a tree mirroring ``/``),
    building it first if the cache has none. Concurrent callers wait for one build."""
    pg = PgInstallation.of(bin_dir)
    cache = _cache_dir(pg)
    stage = cache / "stage"
    if (stage / _COMPLETE).exists():
        return stage
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stage / _COMPLETE).exists():  # else another process built it while we waited
            _build(pg, cache)
    return stage


def _build(pg: PgInstallation, cache: Path) -> None:
    tarball = source_tarball()
    if tarball is None:
        raise DevStackError(f"TimescaleDB source {_TARBALL} not found")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TIMESCALEDB_SHA256:
        raise DevStackError(f"{tarball}: sha256 {digest}, expected {TIMESCALEDB_SHA256} (the unmodified release)")
    logfile = cache / "build.log"
    logfile.unlink(missing_ok=True)
    logger.warning("timescaledb: building %s for PostgreSQL %s (once; 2-5 minutes)", TIMESCALEDB_VERSION, pg.version)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="data")
        tree = work / f"timescaledb-{TIMESCALEDB_VERSION}"
        bootstrap = ["./bootstrap", f"-DPG_CONFIG={pg.bindir / 'pg_config'}", *_CMAKE_OPTIONS]
        _run_in(tree, bootstrap, "configuring TimescaleDB (cmake)", logfile)
        jobs = str(max(1, os.cpu_count() or 1))
        _run_in(tree, ["make", "-C", "build", f"-j{jobs}"], "compiling TimescaleDB", logfile)
        staged = work / "stage"
        _run_in(tree, ["make", "-C", "build", "install", f"DESTDIR={staged}"], "staging TimescaleDB", logfile)
        if not (staged / pg.pkglibdir.relative_to("/") / "timescaledb.so").exists():
            raise fail(f"the TimescaleDB build produced no timescaledb.so under {staged}", [logfile])
        (staged / _COMPLETE).touch()
        shutil.rmtree(cache / "stage", ignore_errors=True)
        staged.rename(cache / "stage")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.warning("timescaledb: built and cached in %s", cache)


def _run_in(tree: Path, argv: list[str], what: str, logfile: Path) -> None:
    # run_tool has no cwd; the build scripts expect to run from the source tree.
    run_tool(["env", "-C", str(tree), *argv], what=what, logfile=logfile, timeout=_BUILD_TIMEOUT_S)


def private_installation(bin_dir: Path, root: Path) -> Path:
    """A copy of the installation of ``bin_dir`` plus TimescaleDB under ``root``; returns its bin dir.

    Kept while it matches the system's PostgreSQL version and the cached build; rebuilt otherwise.
    """
    if (bin_dir.parent / "lib" / "timescaledb.so").exists():
        return bin_dir  # installed system-wide (e.g. a distribution package): nothing to copy
    pg = PgInstallation.of(bin_dir)
    stage = built_extension(bin_dir)
    stamp = f"timescaledb {TIMESCALEDB_VERSION}, PostgreSQL {pg.version}\n"
    marker = root / _COMPLETE
    if marker.exists() and marker.read_text() == stamp:
        return _inside(root, pg.bindir)
    shutil.rmtree(root, ignore_errors=True)
    for directory in (pg.bindir, pg.pkglibdir, pg.sharedir):
        shutil.copytree(directory, _inside(root, directory), symlinks=True, dirs_exist_ok=True)
    shutil.copytree(stage, root, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(_COMPLETE))
    marker.write_text(stamp)
    logger.info("timescaledb: private PostgreSQL %s installation with TimescaleDB in %s", pg.version, root)
    return _inside(root, pg.bindir)


def _inside(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _pg_config(pg_config: Path, *flags: str) -> list[str]:
    result = subprocess.run([str(pg_config), *flags], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DevStackError(f"{pg_config} {' '.join(flags)} failed: {result.stderr.strip()}")
    return result.stdout.splitlines()
