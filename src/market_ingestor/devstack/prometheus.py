"""Prometheus for the dev stack (``dev up --with prometheus``): ``$PROMETHEUS_URL`` if set, else a local
``prometheus`` (Debian's package; scripts/install-system-deps.sh installs it).

It scrapes the jobs it is given (:func:`.scrape.pipeline_jobs`: the local services) and itself, from a config file
rendered into its state directory; its TSDB lives there too, bounded in age and size. Ready when ``/-/ready``
answers 200. Started again with other jobs, it restarts on the new config.
"""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from market_ingestor.devstack.config import HOST, PROMETHEUS_PORT, StackConfig
from market_ingestor.devstack.process import spawn_detached
from market_ingestor.devstack.scrape import SELF_JOB, ScrapeJob, render_config
from market_ingestor.devstack.server import LocalServer
from market_ingestor.errors import DevStackError

logger = logging.getLogger(__name__)

RETENTION_TIME = "7d"
RETENTION_SIZE = "512MB"


class PrometheusServer(LocalServer):
    name = "prometheus"
    external_env = "PROMETHEUS_URL"
    program = "prometheus"
    stop_grace_s = 30.0  # it writes its head block out on SIGTERM

    def __init__(self, config: StackConfig, jobs: Sequence[ScrapeJob] = (), *, scrape_interval_s: int = 15) -> None:
        super().__init__(config)
        self.jobs = tuple(jobs)
        self.scrape_interval_s = scrape_interval_s

    @property
    def port(self) -> int:
        return self.config.prometheus_port

    @property
    def local_kind(self) -> str:
        return "prometheus"

    def local_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    def rendered_config(self) -> str:
        """The configuration this server runs with: the given jobs and Prometheus's own metrics."""
        own = ScrapeJob(SELF_JOB, (f"{HOST}:{self.port}",))
        return render_config((*self.jobs, own), scrape_interval_s=self.scrape_interval_s)

    def ensure(self, timeout: float = 120.0) -> bool:
        # A running Prometheus with another scrape config (other services' ports, interval) is restarted on this one.
        if not self.external_url and self.running_pid() is not None and not self._runs_this_config():
            logger.info("%s: the scrape config changed; restarting", self.name)
            self.stop()
        return super().ensure(timeout)

    def _runs_this_config(self) -> bool:
        try:
            return self.config_file.read_text() == self.rendered_config()
        except OSError:
            return False

    def _launch(self, timeout: float) -> int:
        self.config_file.write_text(self.rendered_config())
        argv = [
            str(_prometheus_binary()),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION_TIME}",
            f"--storage.tsdb.retention.size={RETENTION_SIZE}",
            f"--web.listen-address={HOST}:{self.port}",
        ]
        return spawn_detached(argv, pidfile=self.pidfile, logfile=self.logs[0], cwd=self.home)

    def _answers(self) -> bool:
        # The port opens before the TSDB is loaded; /-/ready answers 200 only once it serves queries.
        try:
            with urllib.request.urlopen(f"{self.url()}/-/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def own_prometheus_config(state_dir: Path, free_port: Callable[[], int]) -> StackConfig:
    """A dev-stack config of its own, for a Prometheus beside the dev stack's (a test's, a bench's): state under
    ``state_dir``, the Prometheus port a free one (``free_port()``); its other servers are not meant to start."""
    for _ in range(20):
        try:
            return StackConfig.from_env(state_dir, port_offset=free_port() - PROMETHEUS_PORT)
        except DevStackError:  # the offset puts a server on another's default port: pick again
            continue
    raise DevStackError("no usable port offset found for an own Prometheus")


def _prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    raise DevStackError(
        "prometheus not found on PATH: install it (Debian: apt-get install --no-install-recommends prometheus; "
        "scripts/install-system-deps.sh does), or set PROMETHEUS_URL to a running one"
    )
