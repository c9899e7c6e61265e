"""The dev stack's Prometheus configuration against the compose one: the same pipeline jobs, on loopback at the ports
the local services' config gives them; both files (and any rules file) pass ``promtool check``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from market_ingestor.config import load_config
from market_ingestor.devstack.config import StackConfig
from market_ingestor.devstack.prometheus import PrometheusServer
from market_ingestor.devstack.scrape import PIPELINE_JOBS, ScrapeJob, pipeline_jobs, render_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_PROMETHEUS = REPO / "prometheus" / "prometheus.yml"
EXAMPLE_CONFIG = REPO / "market-ingestor.example.toml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (Debian: apt-get install prometheus; scripts/install-system-deps.sh does)",
)

# Jobs of the compose stack with no counterpart in the dev stack, and why.
COMPOSE_ONLY = {
    "redpanda": "the dev stack's broker is Apache Kafka or Tansu, neither serves Prometheus metrics",
    "nats": "scraped through nats-exporter, which the dev stack does not run",
    "timescaledb": "scraped through postgres-exporter, which the dev stack does not run",
    "grafana": "the dev stack runs no Grafana",
}


def _jobs(text: str) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(text)
    return {job["job_name"]: job for job in document["scrape_configs"]}


def _dev_server(tmp_path: Path, offset: int = 0) -> PrometheusServer:
    config = load_config(EXAMPLE_CONFIG, environ={})
    return PrometheusServer(StackConfig(tmp_path, offset), pipeline_jobs(config), scrape_interval_s=1)


def test_the_dev_config_has_the_compose_configs_jobs(tmp_path):
    compose = _jobs(COMPOSE_PROMETHEUS.read_text())
    dev = _jobs(_dev_server(tmp_path).rendered_config())

    assert list(dev) == [name for name in compose if name not in COMPOSE_ONLY]
    assert set(PIPELINE_JOBS) < set(dev)


def test_the_dev_config_scrapes_loopback_at_the_services_metrics_ports(tmp_path):
    dev = _jobs(_dev_server(tmp_path, offset=700).rendered_config())

    targets = {name: job["static_configs"][0]["targets"] for name, job in dev.items()}
    # The example config's ports, which are also the compose stack's (tests/test_compose.py).
    assert targets == {
        "ingest": ["127.0.0.1:9101"],
        "worker": ["127.0.0.1:9102"],
        "sink": ["127.0.0.1:9103"],
        "push": ["127.0.0.1:9104"],
        "api": ["127.0.0.1:8000"],
        "prometheus": ["127.0.0.1:19790"],  # its own port follows the dev stack's port offset
    }
    assert {job["metrics_path"] for job in dev.values()} == {"/metrics"}


def test_the_ports_follow_the_services_config(tmp_path):
    path = tmp_path / "market-ingestor.toml"
    path.write_text("[ingest]\nmetrics_port = 1\n[streams]\nmetrics_port = 2\n[sink]\nmetrics_port = 3\n"
                    "[push]\nmetrics_port = 4\n[api]\nport = 5\n")  # fmt: skip
    jobs = pipeline_jobs(load_config(path, environ={}))

    assert jobs == tuple(ScrapeJob(name, (f"127.0.0.1:{n}",)) for n, name in enumerate(PIPELINE_JOBS, 1))


def test_rendering_sets_the_interval_and_a_timeout_within_it():
    jobs = [ScrapeJob("a", ("h:1",)), ScrapeJob("b", ("h:2", "h:3"), "/x")]

    fast = yaml.safe_load(render_config(jobs, scrape_interval_s=1))
    slow = yaml.safe_load(render_config(jobs, scrape_interval_s=30))

    assert fast["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert slow["global"] == {"scrape_interval": "30s", "scrape_timeout": "10s", "evaluation_interval": "30s"}
    assert fast["scrape_configs"] == [
        {"job_name": "a", "metrics_path": "/metrics", "static_configs": [{"targets": ["h:1"]}]},
        {"job_name": "b", "metrics_path": "/x", "static_configs": [{"targets": ["h:2", "h:3"]}]},
    ]
    with pytest.raises(ValueError, match="repeat"):
        render_config([*jobs, jobs[0]])
    with pytest.raises(ValueError, match="at least 1"):
        render_config(jobs, scrape_interval_s=0)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_accepts_the_compose_config():
    result = _promtool("check", "config", str(COMPOSE_PROMETHEUS))

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_dev_config(tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(_dev_server(tmp_path).rendered_config())

    result = _promtool("check", "config", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_config(tmp_path):
    """The check above would pass on anything if promtool accepted everything."""
    path = tmp_path / "prometheus.yml"
    path.write_text(render_config([ScrapeJob("a", ("h:1",))]).replace("scrape_timeout: 10s", "scrape_timeout: 20s"))

    assert _promtool("check", "config", str(path)).returncode != 0


RULE_FILES = sorted(REPO.glob("prometheus/**/*rules*.y*ml"))


@needs_promtool
@pytest.mark.skipif(not RULE_FILES, reason="the repository has no Prometheus rules file")
def test_promtool_accepts_the_rules_files():
    result = _promtool("check", "rules", *map(str, RULE_FILES))

    assert result.returncode == 0, result.stdout + result.stderr
