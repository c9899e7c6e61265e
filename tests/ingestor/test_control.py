import pytest

from market_ingestor.config import Config, ExchangeConfig
from market_ingestor.errors import SymbolError
from market_ingestor.ingestor.control import command, fold, initial_state


def test_commands_change_the_configured_subscriptions():
    config = Config(exchanges={"binance": ExchangeConfig(symbols=["BTCUSDT"]), "okx": ExchangeConfig(enabled=False)})
    state = fold(
        initial_state(config),
        [
            command("add", "symbol", "binance", "ETHUSDT"),
            command("remove", "symbol", "binance", "BTCUSDT"),
            command("add", "exchange", "okx"),
            command("add", "symbol", "okx", "BTCUSDT"),
        ],
    )
    assert state.subscriptions() == {"binance": frozenset({"ETHUSDT"}), "okx": frozenset({"BTCUSDT"})}


def test_compaction_keeping_only_the_latest_command_per_key_gives_the_same_state():
    history = [
        command("add", "symbol", "kraken", "BTCUSD"),
        command("add", "exchange", "kraken"),
        command("remove", "exchange", "kraken"),
        command("add", "symbol", "kraken", "ETHUSD"),
        command("remove", "symbol", "kraken", "BTCUSD"),
        command("add", "exchange", "kraken"),
    ]
    latest = {}
    for cmd in history:
        latest.pop((cmd.target, cmd.symbol), None)
        latest[(cmd.target, cmd.symbol)] = cmd  # compaction: latest per key, in log order
    empty = initial_state(Config())
    assert fold(empty, history) == fold(empty, latest.values())
    assert fold(empty, history).subscriptions() == {"kraken": frozenset({"ETHUSD"})}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "exchange", "binanse"), "unknown exchange 'binanse'"),
        (("add", "symbol", "binance", "btc/usdt"), "malformed symbol 'btc/usdt'"),
        (("add", "symbol", "binance"), "needs a symbol"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(args, message):
    with pytest.raises(SymbolError, match=message):
        command(*args)
