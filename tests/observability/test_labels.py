"""Label values stay bounded: configured symbols first, at most ``limit`` symbols with their own value, the rest
under ``other``; names outside the exchange registry never become a label value."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from market_ingestor.observability import OTHER, SymbolLabels, Tally


def test_symbols_beyond_the_cap_collapse_to_other_and_configured_ones_come_first():
    labels = SymbolLabels(exchanges={"binance", "okx"})
    labels.configure(3, [("binance", "BTCUSDT"), ("okx", "ETHUSDT")])
    assert labels("okx", "ETHUSDT") == ("okx", "ETHUSDT")
    assert labels("binance", "SOLUSDT") == ("binance", "SOLUSDT")  # the third: still room
    assert len(labels) == 3
    for n in range(1_000):  # symbols added at runtime, or arriving on the bus
        assert labels("binance", f"NEW{n}USDT") == ("binance", OTHER)
    assert labels("okx", "XRPUSDT") == ("okx", OTHER)
    assert len(labels) == 3  # nothing more was admitted
    # Admitted pairs keep their value; the cap counts pairs, so the same symbol elsewhere is another one.
    assert labels("binance", "BTCUSDT") == ("binance", "BTCUSDT")
    assert labels("okx", "BTCUSDT") == ("okx", OTHER)


def test_unknown_exchanges_are_other_and_use_no_room():
    labels = SymbolLabels(limit=1, exchanges={"binance"})
    assert labels("made-up", "BTCUSDT") == (OTHER, OTHER)
    assert labels.exchange("made-up") == OTHER and labels.exchange("binance") == "binance"
    assert labels("binance", "BTCUSDT") == ("binance", "BTCUSDT")


def test_the_default_exchanges_are_the_registry():
    labels = SymbolLabels()
    assert [labels.exchange(name) for name in ("binance", "okx", "bybit", "coinbase", "kraken", "nyse")] == [
        "binance", "okx", "bybit", "coinbase", "kraken", OTHER,
    ]  # fmt: skip


def test_a_tally_is_a_counter_family_when_scraped():
    registry = CollectorRegistry()
    tally = Tally("test_things", "Things", ("kind",))
    registry.register(tally)
    assert "# TYPE test_things_total counter" in generate_latest(registry).decode()  # before any count
    tally.counts[("a",)] += 2
    assert 'test_things_total{kind="a"} 2.0' in generate_latest(registry).decode()
    assert tally.value("a") == 2 and tally.value("b") == 0
