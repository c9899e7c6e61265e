"""The CLI through click's CliRunner, against the real buses of the dev stack."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from market_ingestor.cli.main import _not_yet, cli


def test_help_shows_every_command_group():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for group in ("up", "ingest", "worker", "simulate", "parse", "dev", "exchanges", "symbols", "db", "push"):
        assert f"  {group} " in result.output


def test_a_bad_config_value_fails_with_the_field_path_and_no_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[bus]\nkind = "kafka"\n[bus.kafka]\nlinger_ms = "soon"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "exchanges", "list"])
    assert result.exit_code == 1
    assert "Expected `int`, got `str` - at `$.bus.kafka.linger_ms`" in result.output
    assert "Traceback" not in result.output


def test_a_command_of_a_later_release_says_so():
    # The placeholder itself, not one of the commands: each placeholder goes away when its command lands.
    result = CliRunner().invoke(_not_yet("later", "Do something later", 99), ["--anything"])
    assert result.exit_code == 1
    assert "not yet available" in result.output and "issue 99" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["symbols", "add", "binanse", "BTCUSDT"], "unknown exchange 'binanse'"),
        (["symbols", "add", "binance", "btc-usdt"], "malformed symbol 'btc-usdt'"),
    ],
)
def test_bad_control_arguments_are_refused_before_anything_is_sent(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.kafka
@pytest.mark.nats
@pytest.mark.parametrize("bus", ["kafka", "nats"])
def test_symbols_added_and_removed_through_the_control_topic_show_in_list(bus, dev_stack, tmp_path, monkeypatch):
    # A fresh control topic per test run: the topic name is fixed, so isolate by a unique NATS/Kafka namespace.
    monkeypatch.setenv("KAFKA_BOOTSTRAP", dev_stack.kafka_bootstrap)
    monkeypatch.setenv("NATS_URL", dev_stack.nats_url)
    monkeypatch.setenv("MARKET_INGESTOR__BUS__KIND", bus)
    config = tmp_path / "market-ingestor.toml"
    config.write_text('[exchanges.kraken]\nsymbols = ["BTCUSD"]\n')
    symbol = f"T{uuid.uuid4().hex[:8].upper()}USD"
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(cli, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    invoke("symbols", "add", "kraken", symbol)
    invoke("symbols", "add", "kraken", "ETHUSD")
    invoke("exchanges", "add", "kraken")
    assert f"kraken {symbol}" in invoke("symbols", "list", "kraken").splitlines()
    invoke("symbols", "remove", "kraken", symbol)
    listed = json.loads(invoke("exchanges", "list"))
    assert symbol not in listed["kraken"]
    assert {"BTCUSD", "ETHUSD"} <= set(listed["kraken"])
