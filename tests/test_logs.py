import json
import logging
from decimal import Decimal

from market_ingestor.logs import JsonFormatter, KeyValueFormatter


def record(message: str, **extra) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "market_ingestor.x", "levelname": "INFO", "msg": message})
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_event_and_the_extra_fields():
    line = JsonFormatter().format(record("connected", exchange="binance", attempt=2))
    fields = json.loads(line)
    assert fields["event"] == "connected"
    assert fields["exchange"] == "binance" and fields["attempt"] == 2
    assert fields["level"] == "INFO" and fields["ts"].endswith("Z")
    assert "\n" not in line


def test_key_value_lines_quote_values_with_spaces():
    line = KeyValueFormatter().format(record("lost connection", url="wss://x/y"))
    assert 'event="lost connection"' in line and "url=wss://x/y" in line


def test_decimal_fields_keep_their_digits_in_both_formats():
    rec = record("level removed", qty=Decimal("0.00000000"), price=Decimal("1.0E-8"))
    assert json.loads(JsonFormatter().format(rec))["qty"] == "0.00000000"
    assert "qty=0.00000000 price=0.000000010" in KeyValueFormatter().format(rec)
