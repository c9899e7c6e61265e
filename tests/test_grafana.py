"""The Grafana dashboards against the code and the schema: every PromQL query of "Pipeline health" names metrics
(and groups by labels) that the services register, and every SQL query of "Market" runs, with Grafana's macros
and variables filled in, on a freshly migrated database and returns the columns its panel plots."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from db_helpers import PgServer, fresh_database
from market_ingestor.api import metrics as api_metrics
from market_ingestor.ingestor import metrics as ingest_metrics
from market_ingestor.model import IndicatorValue, Kline, Trade
from market_ingestor.observability import Tally
from market_ingestor.observability import consumer as consumer_metrics
from market_ingestor.push.metrics import PushCollector, PushMetrics
from market_ingestor.sinks import metrics as sink_metrics
from market_ingestor.sinks.writer import RowWriter
from market_ingestor.streams import metrics as worker_metrics

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "grafana" / "dashboards"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yml"
PROMETHEUS_BUILTIN = {"up": frozenset()}  # made by Prometheus for every target, not by the services
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every sample


def _dashboard(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return document


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_dashboards_are_valid_and_use_the_provisioned_datasources():
    datasources = {d["uid"]: d["type"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    files = sorted(DASHBOARDS.glob("*.json"))
    assert {f.name for f in files} == {"pipeline-health.json", "market.json"}
    uids = set()
    for file in files:
        dashboard = _dashboard(file.name)
        uids.add(dashboard["uid"])
        ids = [panel["id"] for panel in _panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{file.name}: panel ids repeat"
        for title, target in _targets(dashboard):
            source = target["datasource"]
            assert datasources.get(source["uid"]) == source["type"], f"{file.name} / {title}: unknown datasource"
    assert len(uids) == len(files)


# --- Pipeline health: PromQL ----------------------------------------------------------------------------------


def registered_metrics() -> dict[str, frozenset[str]]:
    """Sample name -> label names, for every metric the services register (by importing their metric modules,
    and a push collector over counters that all have values)."""
    found: dict[str, frozenset[str]] = dict(PROMETHEUS_BUILTIN)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    for module in (ingest_metrics, worker_metrics, sink_metrics, api_metrics, consumer_metrics):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                (family,) = obj.describe()
                labels = frozenset(obj._labelnames)  # no public accessor; the label names are the point here
            elif isinstance(obj, Tally):
                family, labels = next(obj.describe()), frozenset(obj.labelnames)
            else:
                continue
            for suffix in suffixes[family.type]:
                found[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    metrics = PushMetrics(lag_disconnects_total=1)
    metrics.refused_total["origin"] = metrics.request_errors_total["bad_request"] = 1
    for family in PushCollector(metrics).collect():
        for sample in family.samples:
            found[sample.name] = frozenset(sample.labels)
    return found


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, labels grouped by) in a PromQL expression; Grafana's variables may appear in ranges."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, e.g. [$__rate_interval]
    grouped: set[str] = set()
    for match in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        grouped |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group(0) in _KEYWORDS:
            continue  # a function or aggregation
        names.add(match.group(0))
    return names, grouped


def test_promql_names_are_parsed():
    names, grouped = promql_names(
        "histogram_quantile(0.99, sum by (le, exchange) "
        '(rate(ingest_latency_seconds_bucket{job="x"}[$__rate_interval])))'
        " / on (job) group_left sum without (instance) (up) + topk(10, max by (topic) (consumer_lag))"
    )
    assert names == {"ingest_latency_seconds_bucket", "up", "consumer_lag"}
    assert grouped == {"le", "exchange", "instance", "topic"}


def test_every_promql_query_names_registered_metrics_and_their_labels():
    registered = registered_metrics()
    dashboard = _dashboard("pipeline-health.json")
    seen = set()
    for title, target in _targets(dashboard):
        names, grouped = promql_names(target["expr"])
        assert names, f"{title}: no metric in {target['expr']!r}"
        unknown = names - set(registered)
        assert not unknown, f"{title}: {sorted(unknown)} are not registered by any service"
        labels = set().union(*(registered[name] for name in names)) | TARGET_LABELS
        assert grouped <= labels, f"{title}: grouped by {sorted(grouped - labels)}, which {sorted(names)} lack"
        seen |= names
    required = {
        "ingest_latency_seconds_bucket", "trade_process_total", "db_insert_total", "ws_connections_total",
        "ws_clients", "market_events_total", "market_reconnects_total", "market_sequence_gaps_total",
        "market_dead_letters_total", "consumer_lag", "sink_batch_size_bucket", "sink_flush_seconds_bucket",
        "push_updates_dropped_total", "worker_table_rows",
    }  # fmt: skip
    assert required <= seen, f"the dashboard does not show {sorted(required - seen)}"


# --- Market: SQL ----------------------------------------------------------------------------------------------

SECOND = 10**9
T0 = 1_709_251_200 * SECOND  # 2024-03-01T00:00:00Z
FROM, TO = "2024-02-29T23:00:00Z", "2024-03-01T01:00:00Z"
VARIABLES = {"exchange": "binance", "symbol": "BTCUSDT", "interval": "1m", "indicator": "bbands_20_2"}


def grafana_sql(sql: str, variables: dict[str, str]) -> str:
    """The query as Grafana's PostgreSQL datasource sends it: macros expanded, variables interpolated."""
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{FROM}' AND '{TO}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{FROM}'").replace("$__timeTo()", f"'{TO}'")
    sql = re.sub(r"\$\{(\w+):sqlstring\}", lambda m: "'" + variables[m.group(1)].replace("'", "''") + "'", sql)
    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], sql)
    assert "$" not in sql, f"a macro this test does not know: {sql}"
    return sql


def _kline(minute: int, close: str) -> Kline:
    t = T0 + minute * 60 * SECOND
    price = Decimal(close)
    one = Decimal("1.5")
    return Kline(
        "binance", "BTCUSDT", "1m", t, t + 60 * SECOND - 1, price, price + 1, price - 1, price, one, one * price, 3,
        one, one * price, str(minute * 3), str(minute * 3 + 2), price, True,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def database(pg_server: PgServer) -> AsyncIterator[str]:
    """A migrated database with two closed klines, their indicator values and a trade."""
    async with fresh_database(pg_server, "grafana", migrated=True) as url:
        writer = RowWriter(url)
        await writer.start()
        values = {
            "sma_20": {"value": "42000.5"}, "ema_20": {"value": "42001"}, "vwap": {"value": "42000.2"},
            "bbands_20_2": {"lower": "41990", "middle": "42000", "upper": "42010"}, "rsi_14": {"value": "55.5"},
            "macd_12_26_9": {"macd": "1.5", "signal": "1.25", "hist": "0.25"}, "atr_14": {"value": "12.5"},
        }  # fmt: skip
        indicators = [
            IndicatorValue(
                "binance", "BTCUSDT", "1m", spec, T0 + minute * 60 * SECOND, {k: Decimal(v) for k, v in out.items()}
            )
            for minute in (0, 1)
            for spec, out in values.items()
        ]
        trade = Trade("binance", "BTCUSDT", "7", Decimal("42000.10"), Decimal("0.5"), "buy", T0 + SECOND, T0 + SECOND)
        try:
            await writer.write([_kline(0, "42000"), _kline(1, "42005"), *indicators, trade])
        finally:
            await writer.close()
        yield url


@pytest.mark.postgres
async def test_market_variables_list_what_is_stored(database):
    dashboard = _dashboard("market.json")
    connection = await asyncpg.connect(database)
    try:
        listed = {}
        for variable in dashboard["templating"]["list"]:
            rows = await connection.fetch(grafana_sql(variable["query"], VARIABLES))
            listed[variable["name"]] = [row[0] for row in rows]
    finally:
        await connection.close()
    assert listed == {
        "exchange": ["binance"],
        "symbol": ["BTCUSDT"],
        "interval": ["1m"],
        "indicator": ["atr_14", "bbands_20_2", "ema_20", "macd_12_26_9", "rsi_14", "sma_20", "vwap"],
    }


@pytest.mark.postgres
async def test_market_panels_query_real_columns_and_get_the_stored_values(database):
    dashboard = _dashboard("market.json")
    connection = await asyncpg.connect(database)
    try:
        results = {}
        for title, target in _targets(dashboard):
            results[title] = await connection.fetch(grafana_sql(target["rawSql"], VARIABLES))
    finally:
        await connection.close()
    candles = next(rows for title, rows in results.items() if title.endswith("candles, volume and overlays"))
    assert [(r["close"], r["volume"], r["sma_20"], r["bb_upper"], r["vwap"]) for r in candles] == [
        (Decimal("42000"), Decimal("1.5"), Decimal("42000.5"), Decimal("42010"), Decimal("42000.2")),
        (Decimal("42005"), Decimal("1.5"), Decimal("42000.5"), Decimal("42010"), Decimal("42000.2")),
    ]
    assert list(candles[0].keys())[:6] == ["time", "open", "high", "low", "close", "volume"]
    assert [r["signal"] for r in results["MACD 12 26 9"]] == [Decimal("1.25")] * 2
    assert [r["value"] for r in results["RSI 14"]] == [Decimal("55.5")] * 2
    every_output = results["${indicator} (every output)"]
    assert [(r["metric"], r["value"]) for r in every_output[:3]] == [
        ("lower", Decimal("41990")),
        ("middle", Decimal("42000")),
        ("upper", Decimal("42010")),
    ]
    assert [(r["trade_id"], r["price"], r["side"]) for r in results["Latest trades (${exchange} ${symbol})"]] == [
        ("7", Decimal("42000.10"), "buy")
    ]
    assert all(rows for rows in results.values()), {title: len(rows) for title, rows in results.items()}
