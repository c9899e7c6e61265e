"""``market-ingestor api`` on NATS JetStream (bus.kind = "nats"), with the dev stack's NATS and PostgreSQL: an
instance starts with the latest record of every instrument published before it (ready only once it holds all of
them), follows trades and quotes published through the bus adapter (skipping malformed events, never replacing a
newer trade by a late one), drops its consumers and exits 0 on SIGTERM; a restarted instance serves the ticker
before any new event. In process: a ticker whose consumer the server dropped creates it again and follows on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import nats
import pytest
from api_helpers import EXPECTED, ApiProcess, T, free_port, publish, quote, trade

from market_ingestor.api.keys import create_key
from market_ingestor.api.ticker_nats import NatsTicker
from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.nats import stream_name
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import BusConfig, Config, NatsConfig

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

EARLIER = 300  # instruments published before the API starts


@pytest.fixture
async def setup(dev_stack, database_url, tmp_path) -> AsyncIterator[tuple[BusConfig, Path, str]]:
    prefix = f"n{uuid.uuid4().hex[:8]}."
    bus = BusConfig(kind="nats", topic_prefix=prefix, nats=NatsConfig(url=dev_stack.nats_url))
    await open_bus(bus).ensure_topics(prefixed(PIPELINE_TOPICS, prefix))
    path = tmp_path / "market-ingestor.toml"
    path.write_text(
        f'[log]\nlevel = "WARNING"\n[bus]\nkind = "nats"\ntopic_prefix = "{prefix}"\n[bus.nats]\n'
        f'url = "{dev_stack.nats_url}"\n[database]\nurl = "{database_url}"\n'
        f'[streams]\napp_id = "{prefix.rstrip(".")}"\n[api]\nauth_enabled = true\n'
    )
    connection = await asyncpg.connect(database_url)
    try:
        key = (await create_key(connection, "service-test")).key
    finally:
        await connection.close()
    yield bus, path, key
    client = await nats.connect(dev_stack.nats_url)
    try:
        js = client.jetstream()
        for spec in PIPELINE_TOPICS:
            await js.delete_stream(stream_name(prefix + spec.name))
    finally:
        await client.close()


async def consumers(bus: BusConfig) -> int:
    """Consumers on the trades and quotes streams now."""
    client = await nats.connect(bus.nats.url)
    try:
        js = client.jetstream()
        topics = (Topics.TRADES, Topics.QUOTES)
        return sum([(await js.stream_info(stream_name(bus.topic_prefix + t))).state.consumer_count for t in topics])
    finally:
        await client.close()


async def test_the_ticker_starts_with_every_instrument_follows_nats_and_exits_0_on_sigterm(setup):
    bus, config_path, key = setup
    # Before the API starts: many instruments (their latest record each is what an instance starts from) and
    # BTCUSDT's trades in two records, then its quote.
    await publish(bus, *(trade(f"x{n}", T + n, f"{n}.5", symbol=f"X{n}USDT") for n in range(EARLIER)))
    await publish(bus, trade("1", T + 1_000_000_000, "42000.00"))
    await publish(bus, trade("2", T + 2_000_000_001, "42000.20"), quote(T + 3_000_000_000, "42000.10", "42000.30"))
    api = ApiProcess(config_path, free_port(), key)
    try:
        await api.start()  # returns once /readyz answers 200: by then every earlier instrument is there
        assert await api.json("/readyz") == {"ready": True, "database": "ok", "ticker": "recovered"}
        symbols = await api.json("/api/v1/symbols")
        assert sum(s["live"] for s in symbols["data"]) == EARLIER + 1
        assert await api.json("/api/v1/ticker/binance/BTCUSDT") == EXPECTED
        x7 = await api.json("/api/v1/ticker/binance/X7USDT")
        assert (x7["last_trade"]["trade_id"], x7["last_trade"]["price"], x7["quote"]) == ("x7", "7.5", None)
        assert await api.status("/api/v1/ticker/binance/NEWUSDT", 404)
        assert await consumers(bus) == 2  # one ephemeral consumer per stream

        # Live: a late trade (older than the one shown) is not shown; a bad event in a batch record with good ones
        # is skipped. The trades stream is delivered in order: once NEWUSDT shows, what came before it is applied.
        await publish(bus, b"not a trade")  # a record of its own ("[not a trade]"): not JSON at all
        await publish(bus, b'{"type": "trade", "price": "NaN"}', trade("0", T, "1.00"))  # one record: bad, late
        await publish(bus, trade("n1", T + 5, "0.0001", symbol="NEWUSDT"))
        await api.until(lambda: api.status("/api/v1/ticker/binance/NEWUSDT", 200), "showing a new instrument")
        assert await api.json("/api/v1/ticker/binance/BTCUSDT") == EXPECTED
        await publish(bus, trade("3", T + 4_000_000_000, "42000.50"), quote(T + 5_000_000_000, "42000.40", "42000.60"))
        newer = {
            **EXPECTED,
            "last_trade": {**EXPECTED["last_trade"], "trade_id": "3", "price": "42000.50",  # type: ignore[dict-item]
                           "time": "2024-03-01T00:00:04.000000000Z", "time_ms": 1_709_251_204_000},
            "quote": {**EXPECTED["quote"], "bid_price": "42000.40", "ask_price": "42000.60",  # type: ignore[dict-item]
                      "time": "2024-03-01T00:00:05.000000000Z", "time_ms": 1_709_251_205_000},
        }  # fmt: skip
        await api.until(lambda: api.answers("/api/v1/ticker/binance/BTCUSDT", newer), "showing the newer ones")
        both = await api.json("/api/v1/tickers?symbols=binance.BTCUSDT,binance.NEWUSDT")
        assert [t["symbol"] for t in both["data"]] == ["BTCUSDT", "NEWUSDT"] and both["data"][0] == newer
        assert both["data"][1]["last_trade"]["price"] == "0.0001"
        assert await api.stop() == 0
        assert await consumers(bus) == 0  # dropped at stop, not left to expire

        # A new instance starts from the streams: the ticker is there before any new event arrives.
        await api.start()
        assert await api.json("/api/v1/ticker/binance/BTCUSDT") == newer
        assert await api.stop() == 0
    finally:
        await api.close()


async def test_a_ticker_is_recovered_only_once_it_holds_every_instrument_published_before_it(setup):
    bus, _, _ = setup
    await publish(bus, *(trade(f"x{n}", T + n, "1.5", symbol=f"X{n}USDT") for n in range(2_000)))
    await publish(bus, quote(T, "1", "2"))
    ticker = NatsTicker(Config(bus=bus))
    await ticker.start()
    try:
        async with asyncio.TaskGroup() as group:
            follow = group.create_task(ticker.run())
            assert not ticker.recovered
            await asyncio.wait_for(ticker.caught_up.wait(), 30)
            # Woken as soon as it was set: a ticker that said so before reading everything would hold less.
            assert len(ticker.states) == 2_001 and ticker.recovered  # and BTCUSDT, of the quote
            btc = ticker.get("binance.BTCUSDT")
            assert btc is not None and btc.quote is not None and btc.quote.ask_price == Decimal(2)
            follow.cancel()
    finally:
        await ticker.stop()


async def test_a_ticker_whose_consumer_the_server_dropped_follows_again(setup):
    bus, _, _ = setup
    config = Config(bus=bus)
    ticker = NatsTicker(config)
    await publish(bus, trade("1", T, "1.00", symbol="AUSDT"))
    await ticker.start()
    try:
        async with asyncio.TaskGroup() as group:
            follow = group.create_task(ticker.run())
            await until(lambda: ticker.recovered and len(ticker.consumers) == 2, "recovered")
            state = ticker.get("binance.AUSDT")
            assert state is not None and state.trade is not None and state.trade.trade_id == "1"

            client = await nats.connect(bus.nats.url)  # the server drops the trades consumer (as after an outage)
            try:
                dropped = ticker.consumers[bus.topic_prefix + Topics.TRADES]
                await client.jetstream().delete_consumer(stream_name(bus.topic_prefix + Topics.TRADES), dropped)
            finally:
                await client.close()
            await publish(bus, trade("2", T + 1, "2.00", symbol="AUSDT"), trade("b", T, "3.00", symbol="BUSDT"))

            def both_seen() -> bool:
                a, b = ticker.get("binance.AUSDT"), ticker.get("binance.BUSDT")
                return a is not None and a.trade is not None and a.trade.trade_id == "2" and b is not None

            await until(both_seen, "the trades published after the consumer was dropped", timeout_s=30)
            assert ticker.consumers[bus.topic_prefix + Topics.TRADES] != dropped  # a new one
            follow.cancel()
    finally:
        await ticker.stop()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s"
        await asyncio.sleep(0.05)
