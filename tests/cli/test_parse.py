"""``market-ingestor parse`` on the real recordings: the user's way to check a capture."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from market_ingestor.cli.main import cli

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "exchange-samples"


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"recorded sessions not found at {SAMPLES}")
    return SAMPLES


def run_parse(*args: str) -> list[dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["parse", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_binance_recording_prints_its_trades_exactly(samples):
    events = run_parse("-e", "binance", "--instruments", str(samples / "BINANCE.0"), str(samples / "BINANCE.ws.1.0"))
    trades = [e for e in events if e["type"] == "trade"]
    assert {(t["symbol"], t["qty"]) for t in trades} == {("NKNUSDT", "58.00000000"), ("LRCBTC", "177.00000000")}
    assert all(isinstance(t["price"], str) and Decimal(t["price"]) > 0 for t in trades)
    assert {e["type"] for e in events} == {"trade", "quote", "book_delta"}


def test_coinbase_recording_volumes_per_symbol(samples):
    events = run_parse("-e", "coinbase", str(samples / "COINBASE.ws.28.0"))
    volume: dict[str, Decimal] = {}
    for event in events:
        if event["type"] == "trade":
            volume[event["symbol"]] = volume.get(event["symbol"], Decimal(0)) + Decimal(event["qty"])
    assert volume["SKLUSD"] == Decimal("46731.3") and volume["DASHBTC"] == Decimal("15.755")


def test_an_unparsable_line_is_reported_with_its_number_and_the_rest_still_printed(tmp_path):
    frames = tmp_path / "frames.jsonl"
    good = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","T":1,"m":true}}'
    frames.write_text(f"{good}\n{{broken\n")
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "--strict", str(frames)])
    assert result.exit_code == 1
    assert "line 2:" in result.stderr
    assert json.loads(result.stdout)["trade_id"] == "7"


def test_zero_and_tiny_amounts_come_out_with_the_exchanges_digits(tmp_path):
    """A removed level's "0.00000000" and a trade of "0.00000010" are printed as sent, not as 0E-8 / 1.0E-7."""
    frames = tmp_path / "frames.jsonl"
    trade = (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"64000.01000000",'
        '"q":"0.00000010","T":1,"m":false}}'
    )
    depth = (
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":6,'
        '"b":[["64000.00000000","0.00000000"],["63999.99000000","0"]],"a":[["64000.02000000","0.000000010"]]}}'
    )
    frames.write_text(f"{trade}\n{depth}\n")
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "--strict", str(frames)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert '"price":"64000.01000000","qty":"0.00000010"' in lines[0]
    assert '"bids":[["64000.00000000","0.00000000"],["63999.99000000","0"]]' in lines[1]
    assert '"asks":[["64000.02000000","0.000000010"]]' in lines[1]
    assert [json.loads(line)["type"] for line in lines] == ["trade", "book_delta"]


def test_an_exchanges_exponent_form_is_accepted_exactly_and_printed_in_plain_digits(tmp_path):
    frames = tmp_path / "frames.jsonl"
    frames.write_text(
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":8,"p":"6.4E+4","q":"1E-8","T":1,'
        '"m":false}}\n'
    )
    result = CliRunner().invoke(cli, ["parse", "-e", "binance", "--strict", str(frames)])
    assert result.exit_code == 0, result.output
    assert '"price":"64000","qty":"0.00000001"' in result.stdout
