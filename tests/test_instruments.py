import pytest

from market_ingestor.errors import SymbolError
from market_ingestor.instruments import Instrument, InstrumentRegistry, make_symbol, normalize_asset, split_delimited


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        ("BTC-USDT", ("BTC", "USDT")),
        ("XBT/USD", ("BTC", "USD")),
        ("xdg_eur", ("DOGE", "EUR")),
        ("eth:btc", ("ETH", "BTC")),
    ],
)
def test_delimited_names_split_and_fold_aliases(native, expected):
    assert split_delimited(native) == expected


def test_an_undelimited_name_is_not_guessed():
    with pytest.raises(SymbolError, match="instrument listing"):
        split_delimited("btcusdt")


def test_bad_asset_codes_are_rejected_with_the_code_named():
    with pytest.raises(SymbolError, match="'BTC USD'"):
        normalize_asset("BTC USD")


def test_derivative_symbols_carry_a_suffix():
    assert make_symbol("btc", "usd", "perp") == "BTCUSD-PERP"
    assert Instrument("okx", "BTC-USD-220527", "BTC", "USD", "future", "220527").symbol == "BTCUSD-220527"


def test_the_registry_splits_undelimited_names_from_the_listing():
    registry = InstrumentRegistry(
        [Instrument("binance", "BTCUSDT", "BTC", "USDT"), Instrument("binance", "BTCUSD", "BTC", "USD")]
    )
    assert registry.normalize("binance", "btcusdt") == "BTCUSDT"
    assert registry.by_native("binance", "btcusd").quote == "USD"
    assert registry.by_symbol("binance", "BTCUSDT").native == "BTCUSDT"
    assert registry.symbols("binance") == ["BTCUSD", "BTCUSDT"]
    assert registry.normalize("kraken", "XBT/USD") == "BTCUSD"  # delimited: no listing needed
    with pytest.raises(SymbolError, match="unknown symbol 'ETHUSDT' on binance"):
        registry.by_symbol("binance", "ETHUSDT")
    with pytest.raises(SymbolError, match="lists no instrument named 'ethusdt'"):
        registry.by_native("binance", "ethusdt")
