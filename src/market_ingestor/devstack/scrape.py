"""What the dev stack's Prometheus scrapes, as data, and the configuration file it reads, as text.

The jobs are the pipeline jobs of ``prometheus/prometheus.yml`` (the compose stack): one per service, named as
there, but on loopback at the ports the local services' configuration gives them (each section's
``metrics_port``; the api serves ``/metrics`` on ``api.port``). ``tests/devstack/test_prometheus_config.py``
holds the job names to the compose file's and runs ``promtool check config`` on both. No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from market_ingestor.config import Config
from market_ingestor.devstack.config import HOST

#: The pipeline's services, in the order of prometheus/prometheus.yml.
PIPELINE_JOBS: tuple[str, ...] = ("ingest", "worker", "sink", "push", "api")
#: The job of Prometheus's own metrics (also in the compose file).
SELF_JOB = "prometheus"
#: Prometheus's default scrape timeout; a shorter scrape interval shortens it to the interval.
_DEFAULT_TIMEOUT_S = 10


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry with static targets (``host:port``)."""

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"


def metrics_ports(config: Config) -> dict[str, int]:
    """Service (job) name -> the port its ``/metrics`` is served on under ``config``."""
    return {
        "ingest": config.ingest.metrics_port,
        "worker": config.streams.metrics_port,
        "sink": config.sink.metrics_port,
        "push": config.push.metrics_port,
        "api": config.api.port,
    }


def pipeline_jobs(config: Config, host: str = HOST) -> tuple[ScrapeJob, ...]:
    """One job per service of the pipeline, scraping ``host`` at the service's metrics port."""
    ports = metrics_ports(config)
    return tuple(ScrapeJob(name, (f"{host}:{ports[name]}",)) for name in PIPELINE_JOBS)


def render_config(jobs: Sequence[ScrapeJob], *, scrape_interval_s: int = 15) -> str:
    """The ``prometheus.yml`` text scraping ``jobs`` every ``scrape_interval_s`` seconds (also the rule
    evaluation interval). Strings and lists are written in YAML's JSON-compatible flow style."""
    if scrape_interval_s < 1:
        raise ValueError(f"scrape_interval_s must be at least 1, not {scrape_interval_s}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names repeat: {names}")
    timeout_s = min(scrape_interval_s, _DEFAULT_TIMEOUT_S)
    lines = [
        "# Rendered by market-ingestor's dev stack (devstack/scrape.py) from the jobs of prometheus/prometheus.yml.",
        "global:",
        f"  scrape_interval: {scrape_interval_s}s",
        f"  scrape_timeout: {timeout_s}s",
        f"  evaluation_interval: {scrape_interval_s}s",
        "scrape_configs:",
    ]
    for job in jobs:
        lines += [
            f"  - job_name: {json.dumps(job.name)}",
            f"    metrics_path: {json.dumps(job.metrics_path)}",
            "    static_configs:",
            f"      - targets: {json.dumps(list(job.targets))}",
        ]
    return "\n".join(lines) + "\n"
