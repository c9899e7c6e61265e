# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps test test-unit lint demo dev-up dev-down bench bench-sink bench-sink-service bench-metrics clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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
demo: install system-deps
	$(BIN)/market-ingestor dev up
	MARKET_INGESTOR__API__AUTH_ENABLED=false \
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
	rm -rf $(VENV) .devstack .pytest_cache .ruff_cache .mypy_cache
