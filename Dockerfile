# syntax=docker/dockerfile:1
#
# One image for every market-ingestor process (ingest, worker, sink, push, api): docker-compose.yml
# picks the subcommand. Two stages, so the runtime image carries neither the build backend nor pip's
# download cache.
#
#   docker build -t market-ingestor:local .
#   docker run --rm market-ingestor:local --help

ARG PYTHON_VERSION=3.11

# --- build: install the project and its dependencies into a self-contained virtualenv ---------------
FROM python:${PYTHON_VERSION}-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A venv at a fixed path can be copied whole into the runtime stage: same base image, same interpreter
# path, so its scripts' shebangs stay valid.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel build reads (hatchling needs README.md for the project's readme). Copying the
# metadata first would not help caching here: `pip install .` needs src/ too.
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (non-editable) install: the runtime stage must not depend on /src existing.
RUN pip install .

# --- runtime -------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim

# Unbuffered, so log lines reach `docker logs` as they are written, not when a buffer fills or the
# process dies; no .pyc files, since the non-root user cannot write next to the installed code anyway.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed, numeric non-root user: orchestrators can verify runAsNonRoot without resolving names, and
# files written to mounted volumes get a predictable owner.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" app \
    && useradd --system --uid "${APP_UID}" --gid app \
        --home-dir /var/lib/market-ingestor --create-home --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

# The only writable place for the app user: Faust keeps its RocksDB table state under the working
# directory. That state is a cache rebuilt from changelog topics, so it needs no volume.
WORKDIR /var/lib/market-ingestor
USER ${APP_UID}:${APP_UID}

# push gateway (WebSocket) and HTTP API (with its /metrics); /metrics and /healthz of ingest, worker, sink
# and push (their config's metrics_port).
EXPOSE 8765 8000 9101 9102 9103 9104

# Exec form, so the CLI (not a shell) receives SIGTERM and can flush before exiting; compose adds an
# init process (`init: true`) to forward signals and reap children.
ENTRYPOINT ["market-ingestor"]
CMD ["--help"]
