"""Connector behaviour against the local exchange simulator: real WebSockets and REST on localhost, each
exchange's real protocol. Subscribing, live symbol changes, reconnects after drops and stalls, gap detection
and book resync, malformed frames to the dead-letter path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest

from market_ingestor.ingestor import metrics
from market_ingestor.ingestor.connection import ConnectionSettings
from market_ingestor.ingestor.connector import ConnectorSettings, ExchangeConnector, running
from market_ingestor.ingestor.exchanges import ALL_CHANNELS, REGISTRY, Channel, get_spec
from market_ingestor.ingestor.rest import RestClient
from market_ingestor.instruments import InstrumentRegistry
from market_ingestor.model import BookDelta, BookSnapshot, DeadLetter, MarketEvent, Quote, Trade
from market_ingestor.simulator import Simulator, SimulatorConfig

EXCHANGES = sorted(REGISTRY)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
Event = MarketEvent | DeadLetter


class Collector:
    """The connector's sink: keeps every event and wakes waiters, so tests await conditions, not time."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()

    async def __call__(self, events: list[Event]) -> None:
        self.events.extend(events)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Event]], bool], timeout_s: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.events)), timeout_s)

    def of(self, kind: type, symbol: str | None = None) -> list[Event]:
        return [
            e for e in self.events if isinstance(e, kind) and (symbol is None or getattr(e, "symbol", None) == symbol)
        ]


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    config = SimulatorConfig(port=0, symbols=SYMBOLS, trades_per_s=1500, seed=7, book_interval_ms=20)
    async with Simulator(config) as sim:
        yield sim


@pytest.fixture
async def rest() -> AsyncIterator[RestClient]:
    async with RestClient(timeout_s=5.0) as client:
        yield client


async def make_connector(
    sim: Simulator, exchange: str, rest: RestClient, sink: Collector, **connection
) -> ExchangeConnector:
    spec = get_spec(exchange)
    body, _ = await rest.get(sim.rest_url(exchange) + spec.instruments_path)
    registry = InstrumentRegistry(spec.parse_instruments(body))
    settings = ConnectorSettings(
        ws_url=sim.ws_url(exchange),
        rest_url=sim.rest_url(exchange),
        channels=ALL_CHANNELS,
        connection=ConnectionSettings(
            **{"read_timeout_s": 5.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, **connection}
        ),
    )
    return ExchangeConnector(spec, settings, registry, rest, sink)


def counter(metric, *labels: str) -> float:  # type: ignore[no-untyped-def]
    return metric.labels(*labels)._value.get()


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_every_channel_arrives_normalized_and_no_trade_is_lost(simulator, rest, exchange):
    sink = Collector()
    connector = await make_connector(simulator, exchange, rest, sink)
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: all(sink.of(kind, "BTCUSDT") for kind in (Trade, Quote, BookSnapshot, BookDelta)))
        simulator.stall(exchange)  # from here on the simulator sends nothing: what it sent can be compared
        sent = simulator.sent_trades(exchange, "BTCUSDT")
        await sink.wait_for(lambda _: len(sink.of(Trade, "BTCUSDT")) >= sent.count)
    trades = sink.of(Trade, "BTCUSDT")
    assert len(trades) == sent.count
    assert sum((t.qty for t in trades), Decimal(0)) == sent.qty
    assert not sink.of(DeadLetter)
    assert {e.symbol for e in sink.events} == {"BTCUSDT"}  # type: ignore[union-attr]
    assert all(e.exchange == exchange for e in sink.events)


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_symbols_are_added_and_removed_on_the_open_connection(simulator, rest, exchange):
    sink = Collector()
    connector = await make_connector(simulator, exchange, rest, sink)
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: bool(sink.of(Trade, "BTCUSDT")))
        await connector.set_symbols({"BTCUSDT", "ETHUSDT"})
        await sink.wait_for(lambda _: bool(sink.of(Trade, "ETHUSDT")) and bool(sink.of(BookDelta, "ETHUSDT")))
        await connector.set_symbols({"ETHUSDT"})
        await simulator.wait_stats(exchange, lambda s: s.subscriptions == len(connector.settings.channels))
        assert simulator.stats(exchange).sessions_opened == 1  # all of it on the one connection
        before = len(sink.of(Trade, "BTCUSDT"))
        count_eth = len(sink.of(Trade, "ETHUSDT"))
        await sink.wait_for(lambda _: len(sink.of(Trade, "ETHUSDT")) > count_eth + 20)
        assert len(sink.of(Trade, "BTCUSDT")) == before


async def test_an_unknown_symbol_is_refused_and_the_rest_keep_flowing(simulator, rest):
    sink = Collector()
    connector = await make_connector(simulator, "okx", rest, sink)
    async with running(connector, {"BTCUSDT", "NOPEUSDT"}):
        await sink.wait_for(lambda _: bool(sink.of(Trade, "BTCUSDT")))
        assert connector.symbols == {"BTCUSDT"}


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_dropped_connection_is_reopened_and_resubscribed(simulator, rest, exchange):
    sink = Collector()
    reconnects = counter(metrics.RECONNECTS, exchange)
    connector = await make_connector(simulator, exchange, rest, sink)
    async with running(connector, {"BTCUSDT"}):
        await simulator.wait_subscribed(exchange, Channel.TRADES, "BTCUSDT")
        await sink.wait_for(lambda _: bool(sink.of(Trade)))
        await simulator.drop_connections(exchange)
        await simulator.wait_sessions(exchange, opened=2)
        await simulator.wait_subscribed(exchange, Channel.BOOK, "BTCUSDT")
        seen = len(sink.of(Trade))
        snapshots = len(sink.of(BookSnapshot))
        # Flowing again, and the book restarted from a fresh snapshot.
        await sink.wait_for(lambda _: len(sink.of(Trade)) > seen + 5 and len(sink.of(BookSnapshot)) > snapshots)
    assert counter(metrics.RECONNECTS, exchange) == reconnects + 1


async def test_a_stalled_connection_is_abandoned_after_the_read_deadline(simulator, rest):
    sink = Collector()
    connector = await make_connector(simulator, "binance", rest, sink, read_timeout_s=0.5)
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: bool(sink.of(Trade)))
        simulator.stall("binance")  # the socket stays open, nothing comes
        await simulator.wait_sessions("binance", opened=2, timeout_s=10)
        seen = len(sink.of(Trade))
        await sink.wait_for(lambda _: len(sink.of(Trade)) > seen)


@pytest.mark.parametrize("exchange", ["binance", "okx", "bybit", "kraken"])
async def test_a_book_gap_is_detected_and_the_book_resynchronized(simulator, rest, exchange):
    """Binance, OKX and Bybit number their updates; Kraken's checksum catches the missing one."""
    sink = Collector()
    connector = await make_connector(simulator, exchange, rest, sink)
    resyncs = counter(metrics.BOOK_RESYNCS, exchange)
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: len(sink.of(BookDelta)) >= 3)
        snapshots = len(sink.of(BookSnapshot))
        simulator.inject_gap(exchange, "BTCUSDT", updates=3)
        await sink.wait_for(lambda _: len(sink.of(BookSnapshot)) > snapshots)
        # After the fresh snapshot the book chains again: deltas keep coming, no further resync.
        deltas = len(sink.of(BookDelta))
        await sink.wait_for(lambda _: len(sink.of(BookDelta)) > deltas + 3)
    assert counter(metrics.BOOK_RESYNCS, exchange) >= resyncs + 1


@pytest.mark.parametrize("exchange", ["binance", "coinbase", "kraken"])
async def test_a_trade_id_gap_is_counted(simulator, rest, exchange):
    sink = Collector()
    connector = await make_connector(simulator, exchange, rest, sink)
    gaps = counter(metrics.SEQUENCE_GAPS, exchange, "BTCUSDT", "trade")
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: len(sink.of(Trade)) >= 2)
        simulator.inject_gap(exchange, "BTCUSDT", updates=2)
        await sink.wait_for(lambda _: counter(metrics.SEQUENCE_GAPS, exchange, "BTCUSDT", "trade") > gaps)


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_malformed_frames_become_dead_letters_and_the_stream_goes_on(simulator, rest, exchange):
    sink = Collector()
    connector = await make_connector(simulator, exchange, rest, sink)
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: bool(sink.of(Trade)))
        simulator.inject_malformed(exchange, count=3)
        await sink.wait_for(lambda _: len(sink.of(DeadLetter)) >= 3)
        seen = len(sink.of(Trade))
        await sink.wait_for(lambda _: len(sink.of(Trade)) > seen + 3)
    letters = sink.of(DeadLetter)
    assert all(letter.exchange == exchange and letter.reason and letter.raw for letter in letters)  # type: ignore[union-attr]
    assert simulator.stats(exchange).sessions_opened == 1  # no reconnect needed


# Per exchange: a frame of a channel the parser does not handle, and a heartbeat (protocol chatter).
UNHANDLED_AND_CHATTER = {
    "binance": ('{"stream":"btcusdt@kline_1m","data":{"e":"kline"}}', '{"result":null,"id":99}'),
    "bybit": ('{"topic":"trade.BTCUSD","data":[{"symbol":"BTCUSD","price":7800.5}]}',
              '{"success":true,"ret_msg":"pong","conn_id":"c1","op":"ping"}'),
    "coinbase": ('{"type":"open","product_id":"BTC-USD","price":"1","side":"buy"}',
                 '{"type":"heartbeat","sequence":1,"last_trade_id":2,"product_id":"BTC-USD","time":"x"}'),
    "kraken": ('{"channel":"ohlc","type":"update","data":[]}', '{"channel":"heartbeat"}'),
    "okx": ('{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1","2","3","4","5","6","7","8","0"]]}',
            "pong"),
}  # fmt: skip


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_a_frame_not_turned_into_events_is_counted_and_dead_lettered_and_chatter_is_not(
    simulator, rest, exchange
):
    unhandled, chatter = UNHANDLED_AND_CHATTER[exchange]
    sink = Collector()
    connector = await make_connector(simulator, exchange, rest, sink)
    before = counter(metrics.NOT_NORMALIZED, exchange, "unhandled"), counter(metrics.DEAD_LETTERS, exchange)
    async with running(connector, {"BTCUSDT"}):
        await sink.wait_for(lambda _: bool(sink.of(Trade)))
        assert simulator.send_raw(exchange, chatter) == 1
        assert simulator.send_raw(exchange, unhandled) == 1
        await sink.wait_for(lambda _: bool(sink.of(DeadLetter)))
    (letter,) = sink.of(DeadLetter)  # the chatter, sent first on the same socket, left no dead letter
    assert isinstance(letter, DeadLetter)
    assert (letter.exchange, letter.raw) == (exchange, unhandled) and "not normalized" in letter.reason
    after = counter(metrics.NOT_NORMALIZED, exchange, "unhandled"), counter(metrics.DEAD_LETTERS, exchange)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_symbols_beyond_the_per_connection_limit_open_another_connection(simulator, rest):
    import dataclasses

    sink = Collector()
    connector = await make_connector(simulator, "binance", rest, sink)
    connector.spec = dataclasses.replace(connector.spec, max_symbols_per_connection=2)
    async with running(connector, set(SYMBOLS)):
        await simulator.wait_stats("binance", lambda s: s.sessions_current == 2)
        await sink.wait_for(lambda _: all(sink.of(Trade, symbol) for symbol in SYMBOLS))
        assert sorted(len({n for _, n in c.subscriptions}) for c in connector.connections) == [1, 2]
