"""The Faust worker: ``market.trades`` -> klines on ``market.klines``.

State is an explicit per-instrument table, not Faust's windowed tables: Faust closes windows from a wall-clock
cleanup timer (30 s by default) whose ``on_window_close`` does not receive the aggregated value, and windowed
tables have no notion of a per-instrument watermark, flat klines for empty windows or revisions for late trades.
One RocksDB table row per ``{exchange}.{symbol}`` holds every interval of that instrument
(:class:`~market_ingestor.streams.klines.InstrumentKlines`, 2-4 KB), written once per batch with its
changelog. Rows are keyed like ``market.trades`` and the table partitions with the same murmur2 partitioner as our
publisher, so each row lives in the partition of its trades and nothing is repartitioned.

Idempotence: each row stores the offset of the last trade it applied, so trades re-delivered after a crash under
``at_least_once`` are ignored instead of counted twice; under ``exactly_once`` the row, its changelog and the
emitted klines commit in one Kafka transaction.

Faust's RocksDB store takes the partition of a write from the "current event"; a batch from ``take_events`` has
no current event, so before writing an instrument's row we make its latest trade event current.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
import msgspec
from faust.streams import _current_event

from market_ingestor.config import Config
from market_ingestor.model import DeadLetter, Kline, Topics, Trade, bus_key, decoder_for, encode
from market_ingestor.streams.klines import InstrumentKlines, KlineSettings, exact_context, trade_problem

log = logging.getLogger(__name__)

trade_decoder = decoder_for(Trade)


def kline_settings(config: Config) -> KlineSettings:
    streams = config.streams
    return KlineSettings(
        intervals=tuple(streams.intervals),
        grace_ms=streams.grace_ms,
        max_lateness_ms=streams.max_lateness_ms,
        update_interval_ms=streams.update_interval_ms,
    )


def build_app(config: Config, data_dir: str | Path | None = None, web_port: int | None = None) -> faust.App:
    streams, kafka = config.streams, config.bus.kafka
    prefix = config.bus.topic_prefix
    app = faust.App(
        streams.app_id,
        broker=f"kafka://{kafka.bootstrap}",
        store="rocksdb://",
        datadir=str(data_dir or streams.data_dir),
        processing_guarantee=streams.processing_guarantee,
        table_standby_replicas=streams.standby_replicas,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        web_port=web_port or streams.web_port,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
    )
    worker = KlineAgent(app, prefix, kline_settings(config), streams.batch_size, streams.batch_within_s)
    app.timer(streams.timer_interval_s, name="kline-clock")(worker.tick)
    return app


class KlineAgent:
    def __init__(self, app: faust.App, prefix: str, settings: KlineSettings, batch: int, within_s: float) -> None:
        self.app = app
        self.settings = settings
        self.trades = app.topic(prefix + Topics.TRADES, key_type=bytes, value_type=bytes)
        self.klines = app.topic(prefix + Topics.KLINES, key_type=bytes, value_type=bytes)
        self.deadletter = app.topic(prefix + Topics.DEADLETTER, key_type=bytes, value_type=bytes)
        self.table = app.Table("kline-state", default=None, key_type=bytes, value_type=bytes, use_partitioner=True)
        # The working set: instruments of this worker's partitions, and the latest event of each (for writes).
        self.states: dict[bytes, InstrumentKlines] = {}
        self.events: dict[bytes, Any] = {}
        self.batch, self.within_s = batch, within_s
        app.agent(self.trades, name="klines")(self.aggregate)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]

    async def aggregate(self, stream: Any) -> None:
        async for events in stream.take_events(self.batch, within=self.within_s):
            await self.process(events)

    async def process(self, events: Iterable[Any]) -> None:
        now = time.time_ns()
        out: list[Kline] = []
        touched: dict[bytes, Any] = {}
        dead: list[DeadLetter] = []
        with exact_context():
            for event in events:
                key = event.key
                try:
                    trade = trade_decoder.decode(event.value)
                except msgspec.MsgspecError as exc:
                    dead.append(DeadLetter("worker", repr(event.value)[:2000], f"not a trade: {exc}", now))
                    continue
                problem = trade_problem(trade)  # e.g. a NaN price: refused before it touches the state
                if problem is not None:
                    dead.append(DeadLetter(trade.exchange, encode(trade).decode(), problem, now))
                    continue
                state = self.states.get(key) or self._load(key, trade)
                applied = state.apply(trade, position=event.message.offset, wall_ns=now)
                out.extend(applied.klines)
                if applied.too_late:
                    dead.append(DeadLetter(trade.exchange, encode(trade).decode(), applied.reason or "too late", now))
                touched[key] = event
        self.events.update(touched)
        for kline in out:
            await self.klines.send(key=bus_key(kline).encode(), value=encode(kline))
        for letter in dead:
            await self.deadletter.send(key=letter.exchange.encode(), value=encode(letter))
        for key, event in touched.items():
            self._save(key, event)

    def _load(self, key: bytes, trade: Trade) -> InstrumentKlines:
        stored = self.table.get(key)
        if stored is not None:
            state = InstrumentKlines.from_bytes(stored, self.settings)
        else:
            state = InstrumentKlines.new(trade.exchange, trade.symbol, self.settings)
        self.states[key] = state
        return state

    def _save(self, key: bytes, event: Any) -> None:
        # Faust's RocksDB store reads the partition of a write from the current event (see module docstring).
        _current_event.set(weakref.ref(event))
        self.table[key] = self.states[key].to_bytes()

    async def tick(self) -> None:
        """Closes windows of quiet instruments and sends throttled in-progress klines."""
        now = time.time_ns()
        for key, state in list(self.states.items()):
            event = self.events.get(key)
            if event is None:
                continue
            _current_event.set(weakref.ref(event))  # sends and writes belong to the instrument's partition
            with exact_context():
                closed = state.on_time(now)
                updates = state.in_progress(now)
            for kline in (*closed, *updates):
                await self.klines.send(key=key, value=encode(kline))
            if closed:
                self._save(key, event)

    async def on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        """Partitions moved to another worker: forget their instruments (the table keeps their rows)."""
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        for key, event in list(self.events.items()):
            if (event.message.topic, event.message.partition) in partitions:
                self.events.pop(key, None)
                self.states.pop(key, None)
