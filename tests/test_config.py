from pathlib import Path

import pytest

from market_ingestor.config import Config, load_config
from market_ingestor.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "market-ingestor.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config == Config()
    assert config.bus.kind == "kafka" and config.bus.kafka.acks == "all"


def test_file_values_and_env_overrides_layer_in_order(tmp_path):
    path = write(
        tmp_path, '[bus]\nkind = "nats"\n[bus.kafka]\nlinger_ms = 20\n[exchanges.binance]\nsymbols = ["BTCUSDT"]\n'
    )
    config = load_config(
        path,
        environ={
            "KAFKA_BOOTSTRAP": "kafka:9092",
            "MARKET_INGESTOR__BUS__KAFKA__LINGER_MS": "7",
            "MARKET_INGESTOR__EXCHANGES__OKX__SYMBOLS": '["ETHUSDT", "BTCUSDT"]',
            "DATABASE_URL": "postgresql://db/x",
        },
    )
    assert config.bus.kind == "nats"
    assert config.bus.kafka.bootstrap == "kafka:9092"
    assert config.bus.kafka.linger_ms == 7
    assert config.exchanges["binance"].symbols == ["BTCUSDT"]
    assert config.exchanges["okx"].symbols == ["ETHUSDT", "BTCUSDT"]
    assert config.database.url == "postgresql://db/x"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[bus.kafka]\nlinger_ms = "soon"\n', {}, r"Expected `int`, got `str` - at `\$.bus.kafka.linger_ms`"),
        ("[bus.kafka]\nlinger_ms = -1\n", {}, r">= 0 - at `\$.bus.kafka.linger_ms`"),
        ('[bus]\nkind = "rabbit"\n', {}, r"'rabbit' - at `\$.bus.kind` \(expected one of: 'kafka', 'nats'\)"),
        (
            '[storage]\nmode = "timescale"\n',
            {},
            r"'timescale' - at `\$.storage.mode` \(expected one of: 'auto', 'timescaledb', 'postgres'\)",
        ),
        ("[bus.kafka]\nlinger = 5\n", {}, r"unknown field `linger` - at `\$.bus.kafka`"),
        ("[exchanges.binanse]\n", {}, r"'binanse' - at `key` in `\$.exchanges` \(expected one of: 'binance', 'okx'"),
        ("", {"MARKET_INGESTOR__BUS__NATS__REPLICAS": "zero"}, r"\$.bus.nats.replicas"),
        ("[bus\n", {}, r"not valid TOML"),
        ('[streams]\nintervals = ["1m", "1M"]\n', {}, r"'1M'.*months are not supported.* - at `\$.streams.intervals`"),
        ('[streams]\nintervals = ["x"]\n', {}, r"interval 'x'.* - at `\$.streams.intervals`"),
        ('[streams]\nintervals = ["1h", "60m"]\n', {}, r"'1h' and '60m' are the same window"),
        ("[streams]\nintervals = []\n", {}, r"no kline interval configured"),
        ('[streams]\nindicators = ["sma_3", "rsi_x"]\n', {}, r"'rsi_x'.* - at `\$.streams.indicators\[1\]`"),
        ('[streams]\nindicators = ["nope_3"]\n', {}, r"unknown indicator 'nope'"),
        ('[streams]\nindicators = ["sma_3", "sma_3"]\n', {}, r"'sma_3' is configured twice"),
        ("", {"MARKET_INGESTOR__STREAMS__INTERVALS": '["5x"]'}, r"'5x'.* - at `\$.streams.intervals`"),
        (
            "[streams]\nmalloc_mmap_threshold_bytes = 67108864\n",
            {},
            r"<= 33554432 - at `\$.streams.malloc_mmap_threshold_bytes`",
        ),
    ],
)
def test_a_bad_value_fails_at_start_naming_the_field(tmp_path, toml, env, message):
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ=env)


def test_a_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_the_config_path_can_come_from_the_environment(tmp_path):
    path = write(tmp_path, '[log]\nlevel = "DEBUG"\n')
    assert load_config(environ={"MARKET_INGESTOR_CONFIG": str(path)}).log.level == "DEBUG"


def test_the_example_config_in_the_repository_is_valid():
    example = Path(__file__).parent.parent / "market-ingestor.example.toml"
    config = load_config(example, environ={})
    assert config.exchanges
