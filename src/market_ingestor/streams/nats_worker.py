"""The stream worker on NATS JetStream: trades -> klines -> indicators with the same pure code as the Faust worker.

Two stages run in one process, each reading its input stream in order (:class:`StreamReader`): the kline stage
(``market.trades`` -> ``market.klines``, :class:`~market_ingestor.streams.klines.InstrumentKlines`) and the
indicator stage (``market.klines`` -> ``market.indicators``, the indicator :class:`Row`). Instruments are split
into shards (``streams/shards.py``); each worker holds the leases of its share and processes only their
instruments, so several workers share the work and one that stops renewing its leases (killed, paused) has its
shards taken over. State rows and checkpoints live in JetStream key-value buckets (``streams/nats_state.py``).

Guarantees (the README states them per bus): outputs are published, then acknowledged by JetStream, before the
rows that say their input is done are saved, and rows before the shard's checkpoint; a kill therefore repeats at
most the input since the last checkpoint, and never loses any. A kline row keeps the position (stream sequence
and index) of the last trade it applied, so a repeated trade changes nothing; an indicator row classifies a
repeated kline as one it has. Each output message groups what one input message produced and carries the
:func:`~market_ingestor.bus.records.batch_id` of its events as ``Nats-Msg-Id``, so a repeat within the stream's
duplicate window (``bus.nats.duplicate_window_s``) is not stored again. docs/nats-worker.md has the design and
its trade-offs next to Faust's rebalancing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from market_ingestor.bus import PIPELINE_TOPICS, open_bus
from market_ingestor.bus.keys import event_id
from market_ingestor.bus.nats import NatsPublisher, connect_client
from market_ingestor.bus.records import batch_id
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import Config
from market_ingestor.errors import BusError, ConfigError
from market_ingestor.indicators import Update, parse_spec
from market_ingestor.indicators.series import Series, horizon
from market_ingestor.model import AnyEvent, DeadLetter, Kline, encode
from market_ingestor.observability import OTHER, SYMBOLS, Health, MetricsServer
from market_ingestor.observability.lag import CONSUMER_LAG
from market_ingestor.streams import metrics
from market_ingestor.streams.app import POSITION_BITS, kline_settings, trade_decoder
from market_ingestor.streams.indicators import CLOSED_MARK, Row, kline_decoder
from market_ingestor.streams.klines import InstrumentKlines, KlineSettings, exact_context
from market_ingestor.streams.nats_state import Leases, Progress, Rows, StreamReader, bucket_name
from market_ingestor.streams.shards import plan_leases, shard_of
from market_ingestor.validity import trade_problem
from market_ingestor.windows import parse_interval

log = logging.getLogger(__name__)

_FETCH_WAIT_S = 0.25  # float-ok: a fetch waits this long for its first message (the stage lock is held meanwhile)
_SHARD_CACHE_MAX = 100_000
_RETRY_S = 1.0  # float-ok: between attempts to take shards back while NATS does not answer


def worker_id() -> str:
    """A name unique to this process, usable in a key-value key."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


class Stage:
    """What both stages share: the owned shards with their next sequence, the reader, rows and checkpoints."""

    name = ""
    table = ""

    def __init__(self, worker: NatsWorker, topic: str) -> None:
        self.worker = worker
        self.config = worker.config
        app_id = self.config.streams.app_id
        self.shards = self.config.bus.nats.worker_shards
        self.topic = topic
        self.reader = StreamReader(worker.js, topic)
        self.rows = Rows(worker.js, bucket_name(app_id, self.name), self.shards)
        self.progress = Progress(worker.js, bucket_name(app_id, "progress"), self.name)
        self.next_seq: dict[int, int] = {}  # owned shard -> the sequence of its next unprocessed message
        self.saved_seq: dict[int, int] = {}  # what the checkpoint of each owned shard says
        self.dirty: dict[str, int] = {}  # rows changed since the last checkpoint -> their shard
        self.lock = asyncio.Lock()
        self._checkpointed = time.monotonic()
        self._shard_cache: dict[str, int] = {}

    async def start(self) -> None:
        await self.rows.start()
        await self.progress.start()

    def shard(self, key: str) -> int:
        shard = self._shard_cache.get(key)
        if shard is None:
            if len(self._shard_cache) >= _SHARD_CACHE_MAX:
                self._shard_cache.clear()
            shard = self._shard_cache[key] = shard_of(key.encode(), self.shards)
        return shard

    def owns(self, key: str, seq: int) -> bool:
        """Whether this stage processes the message of ``key`` at stream sequence ``seq``."""
        wanted = self.next_seq.get(self.shard(key))
        return wanted is not None and seq >= wanted

    # --- shards coming and going (called by the lease loop) ----------------------------------------------------

    async def take(self, shards: set[int]) -> None:
        async with self.lock:
            stored = await self.rows.load(shards)
            checkpoints = await self.progress.load(shards)
            if not self.next_seq or min(checkpoints.values()) < self.reader.next_seq:
                # Back to the oldest checkpoint: messages of shards already owned are skipped by their next_seq.
                await self.reader.seek(min([*checkpoints.values(), *self.next_seq.values()]))
            self.next_seq.update(checkpoints)
            self.saved_seq.update(checkpoints)
            self.adopt(stored)
            log.info("shards taken", extra={"stage": self.name, "shards": sorted(shards), "rows": len(stored)})

    async def drop(self, shards: set[int], *, save: bool) -> None:
        """Stops processing ``shards``; with ``save``, after a checkpoint (a release), else at once (lost)."""
        async with self.lock:
            if save:
                await self.checkpoint(force=True)
            self._let_go(shards)

    def _let_go(self, shards: set[int]) -> None:
        """Forgets everything of ``shards``: their positions, unsaved rows, states and known revisions."""
        for shard in shards:
            self.next_seq.pop(shard, None)
            self.saved_seq.pop(shard, None)
        for key in [key for key, shard in self.dirty.items() if shard in shards]:
            del self.dirty[key]
        self.forget(shards)
        self.rows.forget(shards)
        self.progress.forget(shards)

    def adopt(self, stored: dict[str, bytes]) -> None:
        raise NotImplementedError

    def forget(self, shards: set[int]) -> None:
        raise NotImplementedError

    def row_bytes(self, key: str) -> bytes | None:
        raise NotImplementedError

    def row_count(self) -> int:
        """Rows (instruments) of the owned shards held now."""
        raise NotImplementedError

    # --- the loop ------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.next_seq or not self.worker.leases.valid():
                await self.worker.wait(stop, _FETCH_WAIT_S)
                continue
            try:
                await self.step()
            except BusError as exc:  # e.g. NATS restarting
                await self.restart(stop, exc)
                continue
            if self.reader.pending is not None:
                CONSUMER_LAG.labels(self.config.streams.app_id, self.topic, "0").set(self.reader.pending)
            metrics.TABLE_ROWS.labels(self.table).set(self.row_count())

    async def step(self) -> None:
        """One read of at most a batch, processed, then a checkpoint when one is due."""
        async with self.lock:
            messages = await self.reader.fetch(self.config.streams.batch_size, _FETCH_WAIT_S)
            if messages:
                await self.process(messages)
            for shard in self.next_seq:  # every message of them up to the reader's position is done
                self.next_seq[shard] = max(self.next_seq[shard], self.reader.next_seq)
            await self.checkpoint()

    async def process(self, messages: list[Msg]) -> None:
        raise NotImplementedError

    async def restart(self, stop: asyncio.Event, error: BusError) -> None:
        """After a read, publish or checkpoint that failed half-way: forgets everything since the last checkpoint
        and takes the same shards again from their checkpoints, as another worker takes over a killed one
        (nothing lost; what is processed again is published with the same ids, so stored once). Tries again
        until JetStream answers, the leases lapse or the worker stops."""
        log.warning(
            "NATS unavailable; starting again from the checkpoints", extra={"stage": self.name, "error": str(error)}
        )
        async with self.lock:
            shards = set(self.next_seq)
            self._let_go(shards)
            await self.reader.seek(self.reader.next_seq)  # drops the consumer; take() seeks to the checkpoints
        while not stop.is_set():
            held = shards & set(self.worker.leases.held)
            if not held:
                return  # lost meanwhile: the lease round claims them again when they are free
            try:
                await self.take(held)
                return
            except BusError as exc:
                log.warning("shards not taken again yet", extra={"stage": self.name, "error": str(exc)})
            await self.worker.wait(stop, _RETRY_S)

    def keeping_up(self) -> bool:
        return self.read_up_to_ns() is not None

    def read_up_to_ns(self) -> int | None:
        """The wall time at which the reader last found at most a batch left in the stream; None while behind, or
        not known since the last seek. What the stream holds is known up to then only: the loop may have been held
        up since (a checkpoint waiting for NATS, a slow publish), with trades piling up unread."""
        pending = self.reader.pending
        if pending is None or pending > self.config.streams.batch_size:
            return None
        return self.reader.read_wall_ns

    async def checkpoint(self, force: bool = False) -> None:
        """Outputs acknowledged, then the changed rows saved, then the shards' checkpoints; at most once per
        ``streams.commit_interval_s`` unless ``force``. Shards whose row or checkpoint another worker wrote
        meanwhile are dropped at once."""
        if not force and time.monotonic() - self._checkpointed < self.config.streams.commit_interval_s:
            return
        self._checkpointed = time.monotonic()
        await self.worker.publisher.flush()
        dirty, self.dirty = self.dirty, {}
        rows = {key: data for key in dirty if (data := self.row_bytes(key)) is not None}
        lost = {dirty[key] for key in await self.rows.save(rows)}
        changed = {shard: seq for shard, seq in self.next_seq.items() if self.saved_seq.get(shard) != seq}
        lost |= await self.progress.save({shard: seq for shard, seq in changed.items() if shard not in lost})
        self.saved_seq.update({shard: seq for shard, seq in changed.items() if shard not in lost})
        if lost:
            log.warning(
                "shards written by another worker; given up", extra={"stage": self.name, "shards": sorted(lost)}
            )
            self._let_go(lost)
            self.worker.lost(lost)

    async def publish(self, topic: str, key: str, events: Sequence[AnyEvent]) -> None:
        """One output message of ``events`` of one instrument, named by their identities."""
        if events:
            await self.worker.publisher.publish_record(
                topic, key, [encode(event) for event in events], batch_id(event_id(event) for event in events)
            )

    async def dead_letter(self, letter: DeadLetter) -> None:
        prefix = self.config.bus.topic_prefix
        await self.worker.publisher.publish(
            prefix + Topics.DEADLETTER, letter.exchange, encode(letter), event_id(letter)
        )


class KlineStage(Stage):
    name = "klines"
    table = "kline-state"  # the Faust worker's table name, so dashboards read both

    def __init__(self, worker: NatsWorker, settings: KlineSettings) -> None:
        super().__init__(worker, worker.config.bus.topic_prefix + Topics.TRADES)
        self.settings = settings
        self.out = worker.config.bus.topic_prefix + Topics.KLINES
        self.states: dict[str, InstrumentKlines] = {}
        self._exchange_labels: dict[str, tuple[str]] = {}

    def adopt(self, stored: dict[str, bytes]) -> None:
        for key, data in stored.items():
            self.states[key] = InstrumentKlines.from_bytes(data, self.settings)

    def forget(self, shards: set[int]) -> None:
        for key in [key for key in self.states if self.shard(key) in shards]:
            del self.states[key]

    def row_bytes(self, key: str) -> bytes | None:
        state = self.states.get(key)
        return None if state is None else state.to_bytes()

    def row_count(self) -> int:
        return len(self.states)

    async def process(self, messages: list[Msg]) -> None:
        now = time.time_ns()
        skip = len(self.topic) + 1
        processed: dict[str, int] = {}
        touched: set[str] = set()
        for message in messages:
            seq = message.metadata.sequence.stream
            subject_key = message.subject[skip:]
            if not self.owns(subject_key, seq):
                continue
            try:
                trades = trade_decoder.decode(message.data)
            except msgspec.MsgspecError:
                trades, bad = trade_decoder.split(message.data)
                for raw, reason in bad:
                    await self.dead_letter(DeadLetter("worker", raw.decode("utf-8", "replace")[:2000], reason, now))
                    metrics.DEAD_LETTERS.labels(OTHER, OTHER, "undecodable").inc()
            base = seq << POSITION_BITS  # a trade's position: its message's sequence and its index in it
            closed: dict[str, list[Kline]] = {}
            with exact_context():
                for index, trade in enumerate(trades):
                    processed[trade.exchange] = processed.get(trade.exchange, 0) + 1
                    problem = trade_problem(trade)
                    if problem is not None:
                        await self.dead_letter(DeadLetter(trade.exchange, encode(trade).decode(), problem, now))
                        metrics.DEAD_LETTERS.labels(*SYMBOLS(trade.exchange, trade.symbol), "invalid").inc()
                        continue
                    key = f"{trade.exchange}.{trade.symbol}"
                    state = self.states.get(key)
                    if state is None:
                        state = self.states[key] = InstrumentKlines.new(trade.exchange, trade.symbol, self.settings)
                    applied = state.apply(trade, position=base | index, wall_ns=now)
                    if applied.klines:
                        closed.setdefault(key, []).extend(applied.klines)
                    if applied.too_late:
                        reason = applied.reason or "too late"
                        await self.dead_letter(DeadLetter(trade.exchange, encode(trade).decode(), reason, now))
                        metrics.DEAD_LETTERS.labels(*SYMBOLS(trade.exchange, trade.symbol), "too_late").inc()
                    touched.add(key)
                    self.dirty[key] = self.shard(key)
            for key, klines in closed.items():
                await self.send(key, klines)
        if self.keeping_up():  # not during a replay: the next batch would supersede them at once
            with exact_context():
                updates = {key: self.states[key].in_progress(now) for key in touched}
            for key, klines in updates.items():
                await self.send(key, klines)
        for exchange, count in processed.items():
            metrics.TRADES.counts[self._exchange_label(exchange)] += count

    async def send(self, key: str, klines: list[Kline]) -> None:
        for kline in klines:
            metrics.KLINES.counts[(kline.interval,)] += 1
        await self.publish(self.out, key, klines)

    def _exchange_label(self, exchange: str) -> tuple[str]:
        label = self._exchange_labels.get(exchange)
        if label is None:
            label = self._exchange_labels[exchange] = (SYMBOLS.exchange(exchange),)
        return label

    async def tick(self) -> None:
        """Closes windows of quiet instruments by the wall clock and sends throttled in-progress klines.

        An instrument is known to be quiet only up to the last read that found the stream's end, not up to now:
        after the loop was held up (by a checkpoint waiting for NATS, say), the stream may hold the trades of the
        windows the wall clock has passed meanwhile, and closing them now would close them without those trades
        (then correct them, revision 1, once read)."""
        async with self.lock:
            read_up_to_ns = self.read_up_to_ns()
            if read_up_to_ns is None or not self.worker.leases.valid():
                return
            now = time.time_ns()
            for key, state in list(self.states.items()):
                with exact_context():
                    closed = state.on_time(read_up_to_ns)
                    updates = state.in_progress(now)
                if closed:
                    await self.send(key, closed)
                    self.dirty[key] = self.shard(key)
                await self.send(key, updates)
            await self.checkpoint()


class IndicatorStage(Stage):
    name = "indicators"
    table = "indicator-state"

    def __init__(self, worker: NatsWorker, specs: Sequence[str]) -> None:
        super().__init__(worker, worker.config.bus.topic_prefix + Topics.KLINES)
        self.specs = tuple(specs)
        for spec in self.specs:
            parse_spec(spec)  # a bad spec fails at start, naming it
        self.out = worker.config.bus.topic_prefix + Topics.INDICATORS
        self.stored: dict[str, bytes] = {}
        self.loaded: dict[str, Row] = {}
        self._horizons: dict[str, int | None] = {}

    def adopt(self, stored: dict[str, bytes]) -> None:
        self.stored.update(stored)

    def forget(self, shards: set[int]) -> None:
        for table in (self.stored, self.loaded):
            for key in [key for key in table if self.shard(key) in shards]:
                del table[key]

    def row_bytes(self, key: str) -> bytes | None:
        row = self.loaded.get(key)
        return None if row is None else row.to_bytes()

    def row_count(self) -> int:
        return len(self.stored) + len(self.loaded)

    def _row(self, key: str) -> Row:
        row = self.loaded.get(key)
        if row is None:
            row = self.loaded[key] = Row(self.stored.pop(key, None), self.specs)
        return row

    async def process(self, messages: list[Msg]) -> None:
        skip = len(self.topic) + 1
        stale = metrics.INDICATOR_STALE.counts
        sent = metrics.INDICATORS.counts
        for message in messages:
            if CLOSED_MARK not in message.data or not self.owns(
                message.subject[skip:], message.metadata.sequence.stream
            ):
                continue  # in-progress updates only, or not ours
            try:
                klines = kline_decoder.decode(message.data)
            except msgspec.MsgspecError:
                klines, _ = kline_decoder.split(message.data)  # not ours to judge: the kline stage wrote them
            values: dict[str, list[Any]] = {}
            for kline in klines:
                size = self._horizon(kline.interval)
                if not kline.closed or size is None:
                    continue
                key = f"{kline.exchange}.{kline.symbol}"
                series: Series = self._row(key).get(kline.interval, size)
                if series.classify(kline) is Update.STALE:
                    stale[(kline.interval,)] += 1
                    continue
                for value in series.update(kline):
                    sent[(value.name,)] += 1
                    values.setdefault(key, []).append(value)
                self.dirty[key] = self.shard(key)
            for key, produced in values.items():
                await self.publish(self.out, key, produced)

    def _horizon(self, interval: str) -> int | None:
        if interval not in self._horizons:
            try:
                self._horizons[interval] = horizon(parse_interval(interval).ns, self.config.streams.max_lateness_ms)
            except ConfigError:
                return None
        return self._horizons[interval]


class NatsWorker:
    """Both stages, the shard leases and the wall-clock timer of one worker process."""

    def __init__(self, config: Config, client: NatsClient, publisher: NatsPublisher) -> None:
        self.config = config
        self.client = client
        self.js = client.jetstream()
        self.publisher = publisher
        self.me = worker_id()
        nats = config.bus.nats
        self.leases = Leases(
            self.js, bucket_name(config.streams.app_id, "leases"), self.me, nats.worker_shards, nats.lease_ttl_s
        )
        self.stages: list[Stage] = [KlineStage(self, kline_settings(config))]
        if config.streams.indicators:
            self.stages.append(IndicatorStage(self, config.streams.indicators))
        self.state = "starting"

    @staticmethod
    async def wait(stop: asyncio.Event, seconds: float) -> None:  # float-ok: a duration
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def lost(self, shards: set[int]) -> None:
        """A stage found another worker's writes in ``shards``: the lease is not ours any more."""
        for shard in shards:
            self.leases.held.pop(shard, None)

    async def balance(self) -> None:
        """One lease round: renew, drop what was lost, release what another live worker should have, claim."""
        await self.leases.heartbeat()
        lost = await self.leases.renew()
        if lost:
            log.warning("shard leases lost", extra={"shards": sorted(lost), "worker": self.me})
            for stage in self.stages:
                await stage.drop(lost, save=False)
        members, holders = await self.leases.look()
        plan = plan_leases(self.me, self.leases.shards, members, holders)
        if plan.release:
            for stage in self.stages:
                await stage.drop(set(plan.release), save=True)
            for shard in plan.release:
                await self.leases.release(shard)
            log.info("shards released", extra={"shards": sorted(plan.release), "worker": self.me})
        got = await self.leases.claim(plan.claim)
        if got:
            for stage in self.stages:
                await stage.take(got)

    async def run(self, stop: asyncio.Event) -> None:
        await self.leases.start()
        for stage in self.stages:
            await stage.start()
        interval_s = self.config.bus.nats.lease_ttl_s / 4
        try:
            async with asyncio.TaskGroup() as group:
                for stage in self.stages:
                    group.create_task(stage.run(stop), name=f"nats-{stage.name}")
                group.create_task(self._timer(stop), name="nats-kline-clock")
                self.state = "running"
                while not stop.is_set():
                    try:
                        await self.balance()
                    except BusError as exc:  # e.g. NATS restarting: the leases lapse, processing waits, retry
                        log.warning("lease round failed; trying again", extra={"error": str(exc)})
                    await self.wait(stop, interval_s)
            self.state = "stopping"
            for stage in self.stages:  # the loops have ended: what was processed is saved and checkpointed
                async with stage.lock:
                    await stage.checkpoint(force=True)
            await self.leases.leave()
        finally:
            for stage in self.stages:
                await stage.reader.stop()

    async def _timer(self, stop: asyncio.Event) -> None:
        kline_stage = self.stages[0]
        assert isinstance(kline_stage, KlineStage)
        while not stop.is_set():
            await self.wait(stop, self.config.streams.timer_interval_s)
            if kline_stage.next_seq and not stop.is_set():
                try:
                    await kline_stage.tick()
                except BusError as exc:
                    await kline_stage.restart(stop, exc)

    def health(self) -> Health:
        shards = sorted(self.leases.held)
        return Health(self.state == "running", {"state": self.state, "worker": self.me, "shards": shards})


async def run_worker(config: Config, stop: asyncio.Event | None = None) -> None:
    """``market-ingestor worker`` with ``bus.kind = "nats"``: until SIGINT/SIGTERM (or ``stop``), then checkpoint,
    give the leases back and exit."""
    if config.streams.processing_guarantee == "exactly_once":
        raise ConfigError(
            "streams.processing_guarantee = exactly_once needs Kafka transactions; on NATS the worker runs "
            "at_least_once, its outputs deduplicated by Nats-Msg-Id (docs/nats-worker.md)"
        )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    configured = [(name, symbol) for name, exchange in config.exchanges.items() for symbol in exchange.symbols]
    SYMBOLS.configure(config.metrics.max_symbols, configured)
    await open_bus(config.bus).ensure_topics(prefixed(PIPELINE_TOPICS, config.bus.topic_prefix))
    client = await connect_client(config.bus.nats)
    publisher = NatsPublisher(config.bus.nats, config.bus.batch)
    worker = NatsWorker(config, client, publisher)
    server = MetricsServer(config.metrics.host, config.streams.metrics_port, worker.health, "streams.metrics_port")
    try:
        await server.start()
        await publisher.start()
        await worker.run(stop)
    finally:
        await publisher.stop()
        await client.close()
        await server.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)
