"""The control panel's endpoints with a running monitor on the dev stack's Kafka and on its NATS JetStream:
``/api/v1/status`` shows the connectors' reports (rates, stale ones), the subscriptions, throughput and lag computed
from real offsets and commits (Kafka) or stream and consumer info (NATS); the command endpoints put commands on the
control topic, answer once they are read back, and refuse bad ones naming the field; keys are required when auth is
on. Plus the pure offset arithmetic, its NATS counterpart, and the report board."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import msgspec
import nats
import pytest
from aiohttp.test_utils import TestClient
from api_helpers import serve
from nats.js.errors import NotFoundError

from market_ingestor.api.keys import create_key
from market_ingestor.api.monitor import PanelMonitor, StatusBoard
from market_ingestor.api.offsets import Sample, lag, throughput
from market_ingestor.api.offsets_nats import Progress as ConsumerProgress
from market_ingestor.api.offsets_nats import sample_of
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.nats import stream_name
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import (
    ApiConfig,
    BatchConfig,
    BusConfig,
    Config,
    DatabaseConfig,
    ExchangeConfig,
    KafkaConfig,
    NatsConfig,
    StreamsConfig,
)
from market_ingestor.devstack import StackInfo
from market_ingestor.ingestor.control import read_state
from market_ingestor.model import ConnectorStatus, Trade, encode
from market_ingestor.streams.nats_state import Progress, bucket_name

Setup = tuple[Config, TestClient, PanelMonitor]

NS = 1_000_000_000


# --- pure parts --------------------------------------------------------------------------------------------------


def test_throughput_is_offset_growth_per_second_in_pipeline_order_and_lag_is_end_minus_committed():
    t, k = Topics.TRADES, Topics.KLINES
    old = Sample(10.0, {(t, 0): 100, (t, 1): 50, (k, 0): 7}, {"sink": {(t, 0): 90}, "worker": {(t, 0): 95}})
    new = Sample(
        12.0,
        {(t, 0): 140, (t, 1): 70, (k, 0): 3, (t, 2): 500},  # klines went back (recreated); partition 2 is new
        {"sink": {(t, 0): 100, (t, 1): 60}, "worker": {(t, 0): 135}},
    )
    rows = [(r.stage, r.direction, r.topic, r.per_s) for r in throughput(old, new)]
    assert rows == [
        ("ingest", "out", Topics.BOOK, 0.0),
        ("ingest", "out", Topics.QUOTES, 0.0),
        ("ingest", "out", t, 30.0),  # (40 + 20) / 2 s; the new partition has no rate yet
        ("worker", "in", t, 20.0),
        ("worker", "out", Topics.INDICATORS, 0.0),
        ("worker", "out", k, 0.0),  # an offset that went back is no growth
        ("sink", "in", t, 5.0),  # partition 1's first commit is no growth either
    ]
    lags = lag(new, {"sink": "app-sink", "worker": "app"})
    assert [(g.stage, g.group, g.topic, g.lag) for g in lags] == [("sink", "app-sink", t, 50), ("worker", "app", t, 5)]
    assert [(p.partition, p.end, p.committed, p.lag) for p in lags[0].partitions] == [
        (0, 140, 100, 40),
        (1, 70, 60, 10),
    ]


def test_on_nats_stream_ends_and_consumer_progress_become_the_same_rows():
    t, k = Topics.TRADES, Topics.KLINES
    old = sample_of(10.0, {t: 100, k: 7}, [ConsumerProgress("sink", "app-sink", t, 0, 90, 10)])
    new = sample_of(
        12.0,
        {t: 160, k: 7, Topics.QUOTES: 5},  # the quotes stream is new: no rate yet
        [
            ConsumerProgress("sink", "app-sink", t, 0, 150, 12),  # 10 pending + 2 delivered, not acknowledged
            ConsumerProgress("sink", "app-sink", k, 0, 7, 0),
            # A stage of another kind of consumer (e.g. a worker's shards) comes in as partitions of its group.
            ConsumerProgress("worker", "app", t, 1, 30, 4),
            ConsumerProgress("worker", "app", t, 0, 70, 2),
        ],
    )
    rates = {(r.stage, r.direction, r.topic): r.per_s for r in throughput(old, new)}
    assert rates[("ingest", "out", t)] == 30.0 and rates[("ingest", "out", Topics.QUOTES)] == 0.0
    assert rates[("sink", "in", t)] == 30.0 and rates[("sink", "in", k)] == 0.0
    assert rates[("worker", "in", t)] == 0.0  # first seen now: no growth yet
    assert [(g.stage, g.group, g.topic, g.lag) for g in new.lags] == [
        ("sink", "app-sink", k, 0),
        ("sink", "app-sink", t, 12),
        ("worker", "app", t, 6),
    ]
    assert [(p.partition, p.end, p.committed, p.lag) for p in new.lags[2].partitions] == [
        (0, 160, 70, 2),
        (1, 160, 30, 4),
    ]


def status(exchange: str, ts: int, frames: int, state: str = "connected", instance: str = "a") -> ConnectorStatus:
    return ConnectorStatus(instance, exchange, state, 1, 1, 0, 40, frames, frames * 2, ["BTCUSDT"], ts)  # type: ignore[arg-type]


def test_the_board_keeps_the_latest_report_with_rates_marks_stale_and_forgets_old_ones():
    board = StatusBoard(interval_s=2.0, max_entries=2)
    now = 1_000 * NS
    board.apply(status("binance", now - 4 * NS, 1_000))
    board.apply(status("binance", now - 2 * NS, 1_200))
    board.apply(status("binance", now - 3 * NS, 9_999))  # older than the latest: ignored
    board.apply(status("okx", now - 7 * NS, 5))  # three intervals (6 s) without a report: stale
    binance, okx = board.view(now)
    assert (binance.frames_per_s, binance.events_per_s, binance.stale, binance.report_age_s) == (
        100.0,
        200.0,
        False,
        2.0,
    )
    assert binance.last_message_age_s == 0.04 and okx.frames_per_s is None and okx.stale
    board.apply(status("kraken", now, 1))  # bounded: the oldest report makes room
    assert [v.exchange for v in board.view(now)] == ["binance", "kraken"]
    board.apply(status("bybit", now - 601 * NS, 1, state="stopped", instance="b"))
    assert [v.exchange for v in board.view(now)] == ["binance", "kraken"]  # too old to show at all


# --- with Kafka and with NATS ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def panel_on(kind: Literal["kafka", "nats"], stack: StackInfo, database_url: str) -> AsyncIterator[Setup]:
    """The API app with a running monitor on fresh topics of ``kind``'s bus (NATS streams deleted afterwards)."""
    prefix = f"c{uuid.uuid4().hex[:8]}."
    config = Config(
        bus=BusConfig(
            kind=kind,
            topic_prefix=prefix,
            kafka=KafkaConfig(bootstrap=stack.kafka_bootstrap, partitions=2),
            nats=NatsConfig(url=stack.nats_url),
        ),
        database=DatabaseConfig(url=database_url),
        api=ApiConfig(auth_enabled=False, panel_refresh_s=0.2),
        streams=StreamsConfig(app_id=prefix.rstrip(".")),
        exchanges={"binance": ExchangeConfig(symbols=["BTCUSDT"]), "okx": ExchangeConfig(enabled=False)},
    )
    await open_bus(config.bus).ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
    monitor = PanelMonitor(config)
    await monitor.start()
    try:
        async with serve(config, monitor=monitor) as (client, _):
            yield config, client, monitor
    finally:
        await monitor.stop()
        if kind == "nats":
            connection = await nats.connect(stack.nats_url)
            try:
                js = connection.jetstream()
                for spec in PIPELINE_TOPICS:
                    await js.delete_stream(stream_name(prefix + spec.name))
                with contextlib.suppress(NotFoundError):
                    await js.delete_key_value(bucket_name(config.streams.app_id, "progress"))
            finally:
                await connection.close()


@pytest.fixture(params=[pytest.param("kafka", marks=pytest.mark.kafka), pytest.param("nats", marks=pytest.mark.nats)])
async def setup(request, dev_stack, database_url) -> AsyncIterator[Setup]:
    async with panel_on(request.param, dev_stack, database_url) as made:
        yield made


@pytest.fixture
async def nats_setup(dev_stack, database_url) -> AsyncIterator[Setup]:
    async with panel_on("nats", dev_stack, database_url) as made:
        yield made


async def publish(config: Config, topic: str, events: list[Any], records_of: int = 1000) -> None:
    """Through the bus publisher; on the hot topics in batch records of up to ``records_of`` events."""
    bus = msgspec.structs.replace(config.bus, batch=BatchConfig(max_events=records_of))
    publisher = open_bus(bus).publisher()
    await publisher.start()
    try:
        for event in events:
            await publisher.publish(config.bus.topic_prefix + topic, bus_key(event), encode(event), event_id(event))
    finally:
        await publisher.stop()


async def until(client: TestClient, found: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        response = await client.get("/api/v1/status")
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        if found(body):
            return body
        assert time.monotonic() < deadline, f"status never showed {what}: {body}"
        await asyncio.sleep(0.1)


def trades(first: int, count: int) -> list[Trade]:
    return [Trade("binance", "BTCUSDT", str(n), Decimal("1.5"), Decimal(1), "buy", n, n) for n in range(first, count)]


@pytest.mark.postgres
async def test_status_shows_reports_subscriptions_throughput_and_lag_from_the_bus(setup):
    config, client, _ = setup
    now = time.time_ns()
    # One at a time: on NATS the status stream keeps one record per subject, so a report that has not been read
    # yet when the next one of its connector arrives is gone.
    await publish(config, Topics.STATUS, [status("binance", now - NS, 1_000)])
    await until(client, lambda b: len(b["connectors"]) == 1, "the first report")
    await publish(config, Topics.STATUS, [status("binance", now, 1_500), status("kraken", now - 60 * NS, 3)])
    body = await until(client, lambda b: len(b["connectors"]) == 2, "two connectors")
    binance, kraken = body["connectors"]
    assert (binance["exchange"], binance["state"], binance["stale"], binance["frames_per_s"]) == (
        "binance", "connected", False, 500.0
    )  # fmt: skip
    assert (kraken["exchange"], kraken["stale"]) == ("kraken", True)
    exchanges = {x["exchange"]: (x["enabled"], x["symbols"]) for x in body["exchanges"]}
    assert exchanges == {
        "binance": (True, ["BTCUSDT"]), "okx": (False, []), "bybit": (False, []), "coinbase": (False, []),
        "kraken": (False, []),
    }  # fmt: skip
    assert body["push"] == {"url": None, "port": config.push.port, "auth": False} and body["errors"] == []

    # Throughput: ingest's output grows; lag: the sink's group has committed 4 of 10 records (lag counts records:
    # offsets; these are batch records of one trade each).
    await publish(config, Topics.TRADES, trades(0, 10), records_of=1)
    await commit_as_the_sink(config, 4)

    def sink_lag(b: dict[str, Any]) -> list[Any]:
        return [(g["topic"], g["lag"]) for g in b["lag"] if g["stage"] == "sink"]

    body = await until(client, lambda b: sink_lag(b) == [(Topics.TRADES, 6)], "the sink's lag")
    assert sum(p["committed"] for g in body["lag"] if g["stage"] == "sink" for p in g["partitions"]) == 4
    assert max(p["end"] for g in body["lag"] for p in g["partitions"]) == 10

    def rate(b: dict[str, Any], stage: str, direction: str) -> float:
        return sum(r["per_s"] for r in b["throughput"] if (r["stage"], r["direction"], r["topic"]) == (
            stage, direction, Topics.TRADES
        ))  # fmt: skip

    # The sink's group takes the other 6: its input rate shows, its lag is gone.
    await commit_as_the_sink(config, 6)
    await until(client, lambda b: rate(b, "sink", "in") > 0 and sink_lag(b) == [(Topics.TRADES, 0)], "sink input")
    await publish(config, Topics.TRADES, trades(10, 30))
    await until(client, lambda b: rate(b, "ingest", "out") > 0, "ingest throughput")


async def commit_as_the_sink(config: Config, count: int) -> None:
    """Takes and commits ``count`` trade records in the sink's consumer group (as the sink would)."""
    group = open_bus(config.bus).subscriber([config.bus.topic_prefix + Topics.TRADES], f"{config.streams.app_id}-sink")
    await group.start()
    try:
        taken: list[Any] = []
        while len(taken) < count:
            taken += await group.fetch(max_records=count - len(taken), timeout_s=5)
        await group.commit(taken)
    finally:
        await group.stop()


@pytest.mark.nats
@pytest.mark.postgres
async def test_on_nats_the_stream_workers_checkpoints_are_its_lag_and_input(nats_setup):
    config, client, _ = nats_setup
    await publish(config, Topics.TRADES, trades(0, 10), records_of=1)  # stream sequences 1-10
    connection = await nats.connect(config.bus.nats.url)
    try:
        # What a NATS worker's kline stage writes: per shard, the sequence it goes on from.
        progress = Progress(connection.jetstream(), bucket_name(config.streams.app_id, "progress"), "klines")
        await progress.start()
        assert not await progress.save({0: 8, 1: 5})

        def worker(b: dict[str, Any]) -> list[Any]:
            return [
                (g["group"], g["topic"], g["lag"], [(p["end"], p["committed"]) for p in g["partitions"]])
                for g in b["lag"]
                if g["stage"] == "worker"
            ]

        # The oldest checkpoint (5): 4 records read past by every shard, 6 after it.
        await until(client, lambda b: worker(b) == [(config.streams.app_id, Topics.TRADES, 6, [(10, 4)])], "lag")
        assert not await progress.save({0: 11, 1: 11})
    finally:
        await connection.close()

    def worker_in(b: dict[str, Any]) -> float:
        return sum(r["per_s"] for r in b["throughput"] if (r["stage"], r["direction"]) == ("worker", "in"))

    # Every shard past the end: no lag, and the 6 records read past since show as the worker's input rate.
    done = [(config.streams.app_id, Topics.TRADES, 0, [(10, 10)])]
    await until(client, lambda b: worker(b) == done and worker_in(b) > 0, "the worker's input rate")


async def post(client: TestClient, path: str, body: object, media: str = "application/json") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(path, data=data, headers={"Content-Type": media})
    return response.status, await response.json()


@pytest.mark.postgres
async def test_commands_reach_the_control_topic_and_bad_ones_are_refused_naming_the_field(setup):
    config, client, monitor = setup
    symbols = "/api/v1/control/symbols"
    status_, body = await post(client, symbols, {"action": "add", "exchange": "binance", "symbol": "XRPUSDT"})
    assert status_ == 200, body
    assert body == {
        "command": {"action": "add", "target": "symbol", "exchange": "binance", "symbol": "XRPUSDT"},
        "applied": True,  # read back from the topic by the monitor before answering
        "state": {"exchange": "binance", "enabled": True, "symbols": ["BTCUSDT", "XRPUSDT"]},
    }
    assert (await read_state(config)).symbols["binance"] == {"BTCUSDT", "XRPUSDT"}
    status_, body = await post(client, symbols, {"action": "remove", "exchange": "binance", "symbol": "BTCUSDT"})
    assert (status_, body["state"]["symbols"]) == (200, ["XRPUSDT"])
    status_, body = await post(client, "/api/v1/control/exchanges", {"action": "add", "exchange": "okx"})
    assert (status_, body["state"]) == (200, {"exchange": "okx", "enabled": True, "symbols": []})
    state = await read_state(config)
    assert state.enabled == {"binance", "okx"} and state.symbols["binance"] == {"XRPUSDT"}

    cases: list[tuple[object, str | None, str]] = [
        ({"action": "add", "exchange": "nasdaq", "symbol": "AAPL"}, "exchange", "unknown exchange 'nasdaq'"),
        ({"action": "add", "exchange": "binance", "symbol": "btc/usdt"}, "symbol", "malformed symbol 'btc/usdt'"),
        ({"action": "flip", "exchange": "binance", "symbol": "BTCUSDT"}, "action", "Invalid enum value 'flip'"),
        ({"action": "add", "exchange": "binance"}, "symbol", "missing required field `symbol`"),
        ({"action": "add", "exchange": "binance", "symbol": "X", "at": 1}, "at", "unknown field `at`"),
        (b"{not json", None, "not JSON"),
        (b"x" * 5000, None, "over 4096 bytes"),
    ]
    for request, parameter, reason in cases:
        status_, body = await post(client, symbols, request)
        assert (status_, body["parameter"]) == (400, parameter), (request, body)
        assert reason in body["error"], (request, body)
    # What a form or a cross-site script could send without a CORS preflight is refused.
    for media in ("text/plain", "application/x-www-form-urlencoded"):
        status_, body = await post(client, symbols, {"action": "add", "exchange": "binance", "symbol": "EVIL"}, media)
        assert status_ == 415 and "application/json" in body["error"], body
    assert (await read_state(config)) == state  # nothing of those was sent
    assert monitor.state == state


@pytest.mark.postgres
async def test_with_auth_on_the_page_is_public_and_its_data_and_commands_need_a_key(database_url):
    config = Config(database=DatabaseConfig(url=database_url), api=ApiConfig(auth_enabled=True))
    connection = await asyncpg.connect(database_url)
    try:
        key = (await create_key(connection, "panel")).key
    finally:
        await connection.close()
    async with serve(config) as (client, _):
        for path in ("/panel/", "/panel/panel.js", "/panel/panel.css"):
            response = await client.get(path)
            assert response.status == 200 and response.headers["Cache-Control"] == "no-cache", path
        for path in ("/panel/", "/panel/panel.js", "/panel/panel.css"):
            text = await (await client.get(path)).text()
            assert "http://" not in text and "https://" not in text, path  # nothing loaded from elsewhere
        assert 'src="panel.js"' in await (await client.get("/panel/")).text()
        assert (await client.get("/panel/missing.js")).status == 404
        assert (await client.get("/api/v1/status")).status == 401
        command = {"action": "add", "exchange": "nasdaq", "symbol": "AAPL"}
        assert (await client.post("/api/v1/control/symbols", json=command)).status == 401
        response = await client.get("/api/v1/status", headers={"X-API-Key": key})
        assert response.status == 200 and (await response.json())["exchanges"]
        response = await client.post("/api/v1/control/symbols", json=command, headers={"X-API-Key": key})
        assert response.status == 400  # past the key, the body is checked
