"""The Faust worker: ``market.trades`` -> klines on ``market.klines`` (-> indicators, ``streams/indicators.py``).

State is an explicit per-instrument table, not Faust's windowed tables (docs/faust.md says why): one RocksDB row
per ``{exchange}.{symbol}`` holds every interval of that instrument (:class:`~market_ingestor.streams.klines.
InstrumentKlines`, 2-4 KB), written once per batch with its changelog, in the partition of its trades (the same
murmur2 partitioner as our publisher: nothing is repartitioned). Each row stores the offset of the last trade it
applied, so re-delivered trades are ignored. Outputs and rows go through :class:`PartitionWriter`
(``streams/outputs.py``), which keeps the processing guarantee.

After a restart or a rebalance the rows of the newly assigned partitions are loaded when their recovery completes,
so windows of instruments that stay quiet still close by the wall clock. Every checkpoint also saves, per input
partition, the input offset it commits (an input mark, ``streams/marks.py``): a partition whose local rows are
found behind its committed input is not processed on them but rebuilt from its changelog (docs/faust.md, "Local rows
behind the committed input").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import msgspec
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.bus.faust.app import StreamApp
from market_ingestor.bus.records import BatchDecoder
from market_ingestor.bus.topics import Topics
from market_ingestor.config import BatchConfig, Config
from market_ingestor.model import DeadLetter, Kline, Trade, encode
from market_ingestor.observability import OTHER, SYMBOLS
from market_ingestor.observability.consumer import MetricsService, metrics_service
from market_ingestor.streams import metrics
from market_ingestor.streams.indicators import IndicatorAgent
from market_ingestor.streams.klines import InstrumentKlines, KlineSettings, exact_context
from market_ingestor.streams.marks import InputMarks, is_input_mark
from market_ingestor.streams.outputs import InputLimits, PartitionWriter, next_offsets
from market_ingestor.validity import trade_problem

log = logging.getLogger(__name__)

trade_decoder = BatchDecoder(Trade)
# Bits of a trade's position for its index in its record (bus.batch.max_events is at most 100,000 < 2^20).
POSITION_BITS = 20
# Faust's RocksDB defaults (64 MB x 3 memtables and a 2 GB block cache per partition store) let a worker with a
# backlog grow past 400 MB; our rows are a few KB per instrument, rewritten in place, so small buffers suffice.
# Every partition store has its own block cache (24 stores): at 2 MB each they added up to 48 MB while a backlog
# drained (the indicator rows are read back each batch); 256 KB each measured no slower in bench/klines.py.
TABLE_OPTIONS = {"write_buffer_size": 1 << 20, "max_write_buffer_number": 2, "block_cache_size": 256 << 10}


def kline_settings(config: Config) -> KlineSettings:
    streams = config.streams
    return KlineSettings(
        intervals=tuple(streams.intervals),
        grace_ms=streams.grace_ms,
        max_lateness_ms=streams.max_lateness_ms,
        update_interval_ms=streams.update_interval_ms,
    )


def build_app(config: Config, data_dir: str | Path | None = None, web_port: int | None = None) -> StreamApp:
    streams, kafka = config.streams, config.bus.kafka
    prefix = config.bus.topic_prefix
    app = StreamApp.on_kafka(
        streams.app_id,
        kafka,
        store="rocksdb://",
        datadir=str(data_dir or streams.data_dir),
        processing_guarantee=streams.processing_guarantee,
        table_standby_replicas=streams.standby_replicas,
        web_port=web_port or streams.web_port,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
    )
    app.stop_on_agent_failure = True  # a failed agent stops the worker (exit 1) rather than leave it idle
    limits = InputLimits(streams.batch_size, streams.batch_max_bytes, streams.batch_within_s)
    worker = KlineAgent(app, prefix, kline_settings(config), limits, config.bus.batch, streams.commit_interval_s)
    app.timer(streams.timer_interval_s, name="kline-clock")(worker.tick)
    if streams.indicators:
        IndicatorAgent(
            app,
            prefix,
            streams.indicators,
            limits,
            TABLE_OPTIONS,
            streams.max_lateness_ms,
            config.bus.batch,
            streams.indicator_cache_rows,
        )
    return app


def worker_metrics(app: faust.App, config: Config) -> MetricsService:
    """``/metrics`` and ``/healthz`` of the worker on ``streams.metrics_port``: the counters above, the lag of the
    trades (and klines) partitions it consumes, and the size of its tables."""
    configured = [(name, symbol) for name, exchange in config.exchanges.items() for symbol in exchange.symbols]
    SYMBOLS.configure(config.metrics.max_symbols, configured)
    prefix, streams = config.bus.topic_prefix, config.streams
    topics = [prefix + Topics.TRADES, *([prefix + Topics.KLINES] if streams.indicators else [])]

    async def table_sizes() -> None:
        for name, table in app.tables.items():  # the rows of the active partitions, input marks not counted
            metrics.TABLE_ROWS.labels(name).set(sum(1 for key in table if not is_input_mark(key)))

    return metrics_service(app, config.metrics, streams.metrics_port, "streams.metrics_port", topics, table_sizes)


class KlineAgent:
    def __init__(
        self,
        app: StreamApp,
        prefix: str,
        settings: KlineSettings,
        limits: InputLimits,
        records: BatchConfig,
        commit_interval_s: float = 1.0,  # float-ok: seconds
    ) -> None:
        self.app = app
        self.settings = settings
        # acks=False: the agent commits the offsets of what it processed itself (PartitionWriter.commit_input).
        self.trades = app.topic(prefix + Topics.TRADES, key_type=bytes, value_type=bytes, acks=False)
        self.klines = app.topic(prefix + Topics.KLINES, key_type=bytes, value_type=bytes, acks=False)
        self.deadletter = app.topic(prefix + Topics.DEADLETTER, key_type=bytes, value_type=bytes)
        self.table = app.Table(
            "kline-state", default=None, key_type=bytes, value_type=bytes, use_partitioner=True, options=TABLE_OPTIONS
        )
        self.table.on_recover(self.on_recovered)
        self.writer = PartitionWriter(app, records, self.trades.get_topic_name())
        self.writer.on_fenced(self.on_fenced)
        # The working set: instruments of this worker's partitions, and the trades partition of each.
        self.states: dict[bytes, InstrumentKlines] = {}
        self.sources: dict[bytes, TP] = {}
        self.limits = limits
        self._reload = False
        self._exchange_labels: dict[str, tuple[str]] = {}
        # Processing and the timer take turns; rows and input offsets wait here for the next checkpoint.
        self._lock = asyncio.Lock()
        self._dirty: dict[bytes, TP] = {}
        self._done: dict[TP, int] = {}
        self._checkpointed = time.monotonic()
        self.commit_interval_s = commit_interval_s
        self.marks = InputMarks(app, self.table, self.writer, "klines", self._forget)
        app.agent(self.trades, name="klines")(self.aggregate)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]
        app.on_before_shutdown.connect(self.on_shutdown)

    async def aggregate(self, stream: Any) -> None:
        async for events in self.writer.batches(stream, self.limits):
            async with self._lock:
                if self._reload:
                    self._reload = False
                    self.states.clear()
                    self.sources.clear()
                    self._dirty.clear()
                    self._done.clear()
                    await self.on_recovered()
                try:
                    await self.process(events)
                    await self._checkpoint()
                except BaseException:
                    self._reload = True  # the states may hold trades whose row was never saved: read them again
                    raise

    async def _checkpoint(self, force: bool = False) -> None:
        """Saves the rows changed since the last checkpoint and commits the input they cover, at most once per
        ``streams.commit_interval_s`` (unless ``force``): the per-instrument row writes and the commit (under
        ``exactly_once``, a transaction per source partition) are paid per interval, not per batch. A crash
        replays the input since the last checkpoint; the rows' positions and the processing guarantee make that
        harmless (``streams/outputs.py``). Outputs are flushed before any row says their trades are done."""
        if not force and time.monotonic() - self._checkpointed < self.commit_interval_s:
            return
        self._checkpointed = time.monotonic()
        dirty, self._dirty = self._dirty, {}
        done, self._done = self._done, {}
        await self.writer.flush()
        for key, source in dirty.items():
            state = self.states.get(key)
            if state is not None:
                await self.writer.save(self.table, key, state.to_bytes(), source)
        await self.marks.save(done)
        await self.writer.commit_input(done)

    async def on_shutdown(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        """Before Faust stops the agents (it has stopped fetching): what was processed is saved and committed."""
        async with self._lock:
            if not self._reload:
                await self._checkpoint(force=True)

    async def process(self, events: Sequence[Any]) -> None:
        """Applies the trades of a batch of records (each an array of trades of its partition, docs/topics.md).

        Faust may revoke partitions while a batch waits or while this awaits its sends: records of partitions no
        longer assigned, or taken before the current assignment, are not applied (``PartitionWriter.current``; a
        state loaded for them would stay cached, stale), and what was processed of a partition revoked meanwhile is
        not marked for the checkpoint."""
        events = self.writer.current(events)
        sources = {event.message.tp for event in events}
        checked = await self.marks.checked(sources)
        if checked != sources:
            events = [event for event in events if event.message.tp in checked]
        now = time.time_ns()
        out: list[tuple[bytes, Kline]] = []
        touched: dict[bytes, TP] = {}
        dead: list[tuple[TP, DeadLetter]] = []
        processed: dict[str, int] = {}  # trades per exchange, added to the metric once per batch
        with exact_context():
            for event in events:
                source = event.message.tp
                try:
                    trades = trade_decoder.decode(event.value)
                except msgspec.MsgspecError:
                    trades, bad = trade_decoder.split(event.value)
                    for raw, reason in bad:
                        letter = DeadLetter("worker", raw.decode("utf-8", "replace")[:2000], reason, now)
                        dead.append((source, letter))
                        metrics.DEAD_LETTERS.labels(OTHER, OTHER, "undecodable").inc()
                # A trade's position: its record's offset and its index in the record, so a re-delivered
                # record changes nothing and every trade of a new one applies (docs/topics.md: max 2^20 events).
                base = event.message.offset << POSITION_BITS
                for index, trade in enumerate(trades):
                    exchange = trade.exchange
                    processed[exchange] = processed.get(exchange, 0) + 1
                    problem = trade_problem(trade)  # e.g. a NaN price: refused before it touches the state
                    if problem is not None:
                        dead.append((source, DeadLetter(trade.exchange, encode(trade).decode(), problem, now)))
                        metrics.DEAD_LETTERS.labels(*SYMBOLS(trade.exchange, trade.symbol), "invalid").inc()
                        continue
                    key = f"{trade.exchange}.{trade.symbol}".encode()
                    state = self.states.get(key) or self._load(key, trade)
                    applied = state.apply(trade, position=base | index, wall_ns=now)
                    if applied.klines:
                        out.extend((key, kline) for kline in applied.klines)
                    if applied.too_late:
                        letter = DeadLetter(trade.exchange, encode(trade).decode(), applied.reason or "too late", now)
                        dead.append((source, letter))
                        metrics.DEAD_LETTERS.labels(*SYMBOLS(trade.exchange, trade.symbol), "too_late").inc()
                    touched[key] = source
            # In-progress updates right away where the throttle allows: waiting for the timer would add up to
            # timer_interval_s to every update; the timer sends what the throttle held back. Not while the
            # partition is behind (a replay): the next batch would supersede them at once; closed klines still go
            # out, and the timer sends the in-progress ones once the worker keeps up.
            live = {source: self._keeping_up(source) for source in set(touched.values())}
            for key, source in touched.items():
                if live[source]:
                    out.extend((key, kline) for kline in self.states[key].in_progress(now))
        self.sources.update(touched)
        for exchange, count in processed.items():
            metrics.TRADES.counts[self._exchange_label(exchange)] += count
        sent = metrics.KLINES.counts
        for _, kline in out:
            sent[(kline.interval,)] += 1
        await self.writer.send_all(
            self.klines.get_topic_name(), ((key, encode(kline), touched[key]) for key, kline in out)
        )
        for source, letter in dead:
            await self.writer.send(self.deadletter.get_topic_name(), letter.exchange.encode(), encode(letter), source)
        await self.writer.flush()  # outputs acknowledged before the state says their trades are done
        assigned = self.writer.owned()  # a revocation may have come during the awaits above
        self._dirty.update({key: source for key, source in touched.items() if source in assigned})
        for tp, offset in next_offsets(events).items():
            if tp in assigned:
                self._done[tp] = max(offset, self._done.get(tp, offset))

    def _keeping_up(self, source: TP) -> bool:
        """Whether at most a take's worth of records of ``source`` waits unprocessed (not while unknown)."""
        backlog = self.writer.backlog(source)
        return backlog is not None and backlog <= self.limits.records

    def _exchange_label(self, exchange: str) -> tuple[str]:
        label = self._exchange_labels.get(exchange)
        if label is None:
            label = self._exchange_labels[exchange] = (SYMBOLS.exchange(exchange),)
        return label

    def _load(self, key: bytes, trade: Trade) -> InstrumentKlines:
        stored = self.table.get(key)
        if stored is not None:
            state = InstrumentKlines.from_bytes(stored, self.settings)
        else:
            state = InstrumentKlines.new(trade.exchange, trade.symbol, self.settings)
        self.states[key] = state
        return state

    async def on_recovered(self) -> None:
        """Takes up every instrument of the partitions now assigned, so that windows of instruments that stay
        quiet after a restart or a rebalance still close by the wall clock.

        A row's trades partition comes from the producer's metadata (``PartitionWriter.partition_of``), not from
        Faust's ``Consumer.topic_partitions``: that reads aiokafka's group metadata snapshot, which only the group
        leader fills, so on every other member it was None and a worker that took over partitions never took up
        their quiet instruments (their last windows never closed).

        Only once the table recovery of the current generation is done (``internals.recovered_generation``): a
        callback of an earlier generation's recovery, or one overtaken by a rebalance during its awaits, would
        take up rows of newly assigned partitions before their recovery (a standby's lagging copy), and the
        states, once taken up, are kept: their instruments' klines would miss the trades in between."""
        generation = self.app.consumer_generation_id
        if faust_internals.recovered_generation(self.app) != generation:
            return  # the recovery of the current assignment calls again when it is done
        topic = self.trades.get_topic_name()
        rows = [
            (key, stored) for key, stored in self.table.items() if key not in self.states and not is_input_mark(key)
        ]
        sources = {key: TP(topic, await self.writer.partition_of(topic, key)) for key, _ in rows}
        if self.app.consumer_generation_id != generation:
            return  # a rebalance came during the awaits: the rows read may predate the new assignment's recovery
        owned = self.writer.owned()  # after the awaits: a revocation may have come meanwhile
        for key, stored in rows:
            source = sources[key]
            if source in owned and key not in self.states:  # a batch may have loaded it meanwhile
                self.states[key] = InstrumentKlines.from_bytes(stored, self.settings)
                self.sources[key] = source

    async def tick(self) -> None:
        """Closes windows of quiet instruments and sends throttled in-progress klines."""
        if self.writer.closed or self._reload or self.app.should_stop:
            return
        try:
            async with self._lock:
                if not self._reload:
                    await self._tick()
        except Exception:
            if not self.app.should_stop:
                raise
            # Stopping: the producer closed under a tick that had begun. Nothing of it was saved; the windows
            # close again after the restart. A graceful stop must still exit 0.
            log.info("kline timer interrupted by the shutdown", exc_info=True)

    async def _tick(self) -> None:
        now = time.time_ns()
        closed_keys = []
        keeping_up: dict[TP, bool] = {}
        checked = await self.marks.checked(set(self.sources.values()), faust_internals.inputs_sought(self.app))
        for key, state in list(self.states.items()):
            source = self.sources.get(key)
            if source is None:
                continue
            if source not in keeping_up:
                keeping_up[source] = source in checked and self._keeping_up(source)
            with exact_context():
                # The wall clock stands in for event time only where the worker keeps up with the partition:
                # behind it (after a restart, under load) a quiet-looking instrument's trades may still be waiting.
                closed = state.on_time(now) if keeping_up[source] else []
                updates = state.in_progress(now) if keeping_up[source] else []
            if closed or updates:
                for kline in (*closed, *updates):
                    metrics.KLINES.counts[(kline.interval,)] += 1
                klines = [(key, encode(kline), source) for kline in (*closed, *updates)]
                await self.writer.send_all(self.klines.get_topic_name(), klines)
            if closed:
                closed_keys.append(key)
        await self.writer.flush()
        for key in closed_keys:
            source = self.sources.get(key)  # None: its partition was revoked during the sends
            if source is not None:
                self._dirty[key] = source
        # Under exactly_once, commit_idle commits the transactions this wrote into: the rows and input processed so
        # far must go in with them (at_least_once keeps the interval).
        await self._checkpoint(force=self.app.in_transaction)
        await self.writer.commit_idle()

    async def on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        """Partitions are about to move (a rebalance revokes every partition of the worker first): the batch or
        tick under way ends, what was processed is saved and committed while the partitions are still ours (under
        ``exactly_once`` each partition's transaction commits before a new owner's producer could fence it, and
        none stays open with outputs the re-read input would send again), then their instruments are forgotten
        (the table keeps their rows; the next owner, maybe this worker again, reads on from the commit)."""
        async with self._lock:
            if not self._reload and not self.writer.closed:
                await self._checkpoint(force=True)
            self._forget(revoked)

    def on_fenced(self, lost: set[TP]) -> None:
        """Another worker took ``lost`` while this one was away (``PartitionWriter._fence``): the states hold
        trades whose outputs and rows were aborted, and so may the local rows. Both are dropped; a partition that
        comes back is restored from its committed changelog and its input re-read from the committed offset."""
        self._forget(lost)
        for tp in lost:
            faust_internals.discard_partition(self.app, self.table, tp.partition)

    def _forget(self, revoked: set[Any]) -> None:
        self.writer.forget(revoked)
        for tp in revoked:
            self._done.pop(tp, None)
        for key, source in list(self._dirty.items()):
            if source in revoked:
                del self._dirty[key]
        for key, source in list(self.sources.items()):
            if source in revoked:
                self.sources.pop(key, None)
                self.states.pop(key, None)
