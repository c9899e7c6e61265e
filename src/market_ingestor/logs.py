"""Structured logging: one line per event, JSON or key=value, fields passed with ``extra={...}``.

log.info("connected", extra={"exchange": "binance", "url": url})
-> {"ts":"2026-11-21T06:30:00.123Z","level":"INFO","logger":"market_ingestor.ingestor","event":"connected",
    "exchange":"binance","url":"wss://..."}
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Literal

from market_ingestor.jsontext import JsonEncoder, text

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_encoder = JsonEncoder()


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record as the fields of its line: ts, level, logger, event, then its ``extra``."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname,
        "logger": record.name,
        "event": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _encoder.encode(record_fields(record)).decode()


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in record_fields(record).items():
            shown = text(value)  # a Decimal in plain digits
            if not shown or any(ch in shown for ch in ' "=\n'):
                shown = _encoder.encode(shown).decode()
            parts.append(f"{key}={shown}")
        return " ".join(parts)


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "kv"] = "json",
    path: Path | None = None,
    console: logging.Handler | None = None,
) -> None:
    """Every record at ``level`` and above as one structured line, on stderr or, with ``path``, into that file
    (``up`` does: its console is for people); ``console`` is an extra handler with its own level and format.
    Faust's and mode's loggers propagate here too (the Faust services start their worker with
    ``override_logging=False``), so a service logs in one format."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr) if path is None else logging.FileHandler(path, "w")
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler] if console is None else [handler, console]
    root.setLevel(level)
    # Client libraries narrate every rebalance and reconnect at INFO; ours already report what matters.
    for name in ("aiokafka", "websockets", "nats"):
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
