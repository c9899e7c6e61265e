from prometheus_client import REGISTRY, generate_latest

from market_ingestor.ingestor import metrics


def test_a_tally_is_exposed_as_a_prometheus_counter():
    metrics.EVENTS.counts[("binance", "TALLYUSDT", "Trade")] += 3
    assert metrics.EVENTS.value("binance", "TALLYUSDT", "Trade") >= 3
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE market_events_total counter" in text
    line = next(line for line in text.splitlines() if 'symbol="TALLYUSDT"' in line)
    assert line.startswith("market_events_total{") and float(line.rsplit(" ", 1)[1]) >= 3
