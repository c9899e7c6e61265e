"""Structured logging: one line per event, JSON or key=value, fields passed with ``extra={...}``.

log.info("connected", extra={"exchange": "binance", "url": url})
-> {"ts":"2026-11-21T06:30:00.123Z","level":"INFO","logger":"market_ingestor.ingestor","event":"connected",
    "exchange":"binance","url":"wss://..."}
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

from market_ingestor.jsontext import JsonEncoder, text

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_encoder = JsonEncoder()


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
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
        return _encoder.encode(_fields(record)).decode()


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            shown = text(value)  # a Decimal in plain digits
            if not shown or any(ch in shown for ch in ' "=\n'):
                shown = _encoder.encode(shown).decode()
            parts.append(f"{key}={shown}")
        return " ".join(parts)


def configure_logging(level: str = "INFO", fmt: Literal["json", "kv"] = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries narrate every rebalance and reconnect at INFO; ours already report what matters.
    for name in ("aiokafka", "websockets", "nats"):
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
