# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Every package of the runtime and the dev extra, pinned with hashes (resolved for CPython 3.11 on x86_64 Linux).
LOCK   := requirements.lock
# The lock's resolver (uv), in its own venv: a tool for `make lock` only, never installed into .venv.
LOCK_VENV := .venv-lock
UV_VERSION := 0.13.9
# Extra arguments for `make lock`: LOCK_ARGS=--upgrade (everything) or LOCK_ARGS="--upgrade-package aiohttp".
LOCK_ARGS ?=
# Quix Streams for bench/quix_peer.py: its own venv, since it conflicts with the lock (pydantic-settings).
BENCH_VENV := .venv-bench

.PHONY: install lock bench-venv system-deps test test-unit lint demo dev-up dev-down bench bench-sink bench-sink-service bench-metrics clean

# Exactly the locked set: the lock's packages (hash-checked, no resolution), then the project itself without
# dependencies, then anything the lock no longer names is removed. Re-runs when the lock or pyproject changes.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python scripts/prune-venv.py $(LOCK)
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Regenerates the lock from pyproject.toml: existing pins are kept where they still satisfy it, new or changed
# requirements are resolved; LOCK_ARGS=--upgrade moves everything to the newest allowed versions.
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/python -m pip install -q uv==$(UV_VERSION); }
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --custom-compile-command 'make lock' $(LOCK_ARGS) -o $(LOCK)

# Quix Streams 3.28 for the side-by-side bench: the pyproject's `bench` extra, without the project.
$(BENCH_VENV)/.installed-stamp: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))" > $(BENCH_VENV)/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install -q -r $(BENCH_VENV)/requirements.txt
	$(BENCH_VENV)/bin/python -m pip check
	touch $@

bench-venv: $(BENCH_VENV)/.installed-stamp

# PostgreSQL server binaries, Java and Maven (for Apache Kafka), installed when missing and we may.
system-deps:
	bash scripts/install-system-deps.sh

# The whole suite against real Kafka, PostgreSQL and NATS (the dev stack is started when not running).
test: install system-deps lint
	$(BIN)/market-ingestor dev up
	$(BIN)/pytest -q -p no:cacheprovider

# Pure-logic tests only: no servers needed.
test-unit: install
	$(BIN)/pytest -q -m "not kafka and not nats and not postgres"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The pipeline on the local exchange simulator, until Ctrl-C; `make dev-down` stops the servers afterwards.
# Every service runs (ingest here, worker/sink/push/api as child processes); the control panel is at
# http://127.0.0.1:8000/panel/ (API keys off for the demo only).
# Prometheus (http://127.0.0.1:19090) scrapes the demo's services when it is installed (system-deps installs it).
# `make demo BUS=nats` runs the same pipeline on the dev stack's NATS JetStream instead of Kafka.
BUS ?= kafka
demo: install system-deps
	$(BIN)/market-ingestor --config market-ingestor.example.toml dev up \
	  $$(command -v prometheus >/dev/null && echo --with prometheus || echo "no prometheus on PATH: not started" >&2)
	MARKET_INGESTOR__API__AUTH_ENABLED=false MARKET_INGESTOR__BUS__KIND=$(BUS) \
	  $(BIN)/market-ingestor --config market-ingestor.example.toml up --simulate --with all

dev-up: install
	$(BIN)/market-ingestor dev up

dev-down: install
	$(BIN)/market-ingestor dev down

bench: install
	$(BIN)/market-ingestor dev up
	$(BIN)/python bench/bus.py

bench-sink: install
	$(BIN)/market-ingestor dev up
	$(BIN)/python bench/sink.py --batch-size 50000 --concurrency 2

bench-sink-service: install
	$(BIN)/market-ingestor dev up
	$(BIN)/python bench/sink_service.py

bench-metrics: install
	$(BIN)/python bench/metrics.py

clean:
	-$(BIN)/market-ingestor dev down
	rm -rf $(VENV) $(LOCK_VENV) $(BENCH_VENV) .devstack .pytest_cache .ruff_cache .mypy_cache
