"""The indicators agent: closed klines from ``market.klines`` -> ``market.indicators``.

One RocksDB row per ``{exchange}.{symbol}`` (the klines topic's key, so the row lives in the partition of its
klines) holds one :class:`~market_ingestor.indicators.series.Series` per interval: the indicators' state
and the last klines a correction can still reach (``streams.max_lateness_ms``). A corrected kline (higher
revision) within that horizon replays them and re-emits the values that changed, with higher revisions; anything
older is counted as stale and ignored; a re-delivered kline after a crash changes nothing. Writes go through
:class:`~market_ingestor.streams.outputs.PartitionWriter`, as the kline agent's; values are sent as they are
computed, not collected per batch.

Decoded rows stay in a :class:`RowCache` across batches (``streams.indicator_cache_rows``, least recently used
dropped), so a row is decoded and its series replayed once per process life rather than once per batch. The cache
holds nothing unsaved between batches: it is cleared when a batch fails and loses the rows of revoked partitions.

Row format: msgpack ``{interval: series bytes}``. Rows of the previous format (``{interval: {indicator: state
bytes}}``) load too: such an interval becomes a series without history, rewritten in the new format when its
next kline comes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import faust
import msgspec
from faust.types import TP

from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.bus.faust.app import StreamApp
from market_ingestor.bus.records import BatchDecoder
from market_ingestor.bus.topics import Topics
from market_ingestor.config import BatchConfig
from market_ingestor.errors import ConfigError
from market_ingestor.indicators import Update, from_bytes, parse_spec
from market_ingestor.indicators.series import Series, horizon
from market_ingestor.model import Kline, encode
from market_ingestor.streams import metrics
from market_ingestor.streams.marks import InputMarks
from market_ingestor.streams.outputs import InputLimits, PartitionWriter, next_offsets
from market_ingestor.windows import parse_interval

kline_decoder = BatchDecoder(Kline)
# How msgspec writes a closed kline's flag (no spaces): a record without it holds no closed kline.
CLOSED_MARK = b'"closed":true'
# Values of a batch encoded and then handed to the writer at once, at most this many (memory stays bounded).
SEND_EVERY = 2048
_row_encoder = msgspec.msgpack.Encoder()
# An interval's entry: series bytes, or (the previous format) indicator name -> state bytes.
_row_decoder = msgspec.msgpack.Decoder(dict[str, bytes | dict[str, bytes]])


class Row:
    """One instrument's row, each interval's series decoded only when one of its klines comes."""

    def __init__(self, stored: bytes | None, specs: tuple[str, ...]) -> None:
        self.entries = _row_decoder.decode(stored) if stored is not None else {}
        self.series: dict[str, Series] = {}
        self.specs = specs
        self._changed: dict[str, None] = {}  # intervals whose series changed since to_bytes, in a stable order

    def get(self, interval: str, size: int) -> Series:
        """The series of ``interval``, keeping ``size`` klines correctable; it counts as changed from now on."""
        series = self.series.get(interval)
        if series is None:
            entry = self.entries.get(interval)
            if entry is None:
                series = Series.new(self.specs, size)
            elif isinstance(entry, bytes):
                series = Series.from_bytes(entry, self.specs, size)
            else:
                states = {name: from_bytes(data) for name, data in entry.items()}
                series = Series.from_indicators(states, self.specs, size)
            self.series[interval] = series
        self._changed[interval] = None
        return series

    def to_bytes(self) -> bytes:
        """The row; only the series that changed since the last call are encoded again."""
        for interval in self._changed:
            self.entries[interval] = self.series[interval].to_bytes()
        self._changed.clear()
        return _row_encoder.encode(self.entries)


class RowCache:
    """Decoded rows kept across batches, the least recently used dropped beyond ``max_rows``: a row is decoded
    and its series replayed once per process life (or after an eviction), not once per batch. It holds only rows
    as saved: the agent clears it when a batch fails and drops the rows of revoked partitions."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[bytes, tuple[Row, TP]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> Row | None:
        entry = self._rows.get(key)
        if entry is None:
            return None
        self._rows.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, row: Row, source: TP) -> None:
        """``row`` of ``key``, whose klines come from ``source``."""
        self._rows[key] = (row, source)
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)

    def forget(self, sources: Iterable[TP]) -> None:
        gone = set(sources)
        for key in [key for key, (_, source) in self._rows.items() if source in gone]:
            del self._rows[key]

    def clear(self) -> None:
        self._rows.clear()


class IndicatorAgent:
    def __init__(
        self,
        app: StreamApp,
        prefix: str,
        specs: Sequence[str],
        limits: InputLimits,
        options: dict[str, int],
        max_lateness_ms: int,
        records: BatchConfig,
        cache_rows: int = 4096,
    ) -> None:
        self.app = app
        self.specs = tuple(specs)
        for spec in self.specs:
            parse_spec(spec)  # a bad spec fails at start, naming it
        self.max_lateness_ms = max_lateness_ms
        # acks=False: the agent commits the offsets of what it processed itself (PartitionWriter.commit_input).
        self.klines = app.topic(prefix + Topics.KLINES, key_type=bytes, value_type=bytes, acks=False)
        self.out = app.topic(prefix + Topics.INDICATORS, key_type=bytes, value_type=bytes)
        self.table = app.Table(
            "indicator-state", default=None, key_type=bytes, value_type=bytes, use_partitioner=True, options=options
        )
        self.writer = PartitionWriter(app, records, self.klines.get_topic_name())
        self.writer.on_fenced(self.on_fenced)
        self.marks = InputMarks(app, self.table, self.writer, "indicators", self._forget)
        self.limits = limits
        self.rows = RowCache(cache_rows)
        self._lock = asyncio.Lock()  # a batch and a revocation take turns
        self._horizons: dict[str, int | None] = {}
        app.agent(self.klines, name="indicators")(self.compute)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]

    async def compute(self, stream: Any) -> None:
        async for events in self.writer.batches(stream, self.limits):
            async with self._lock:
                try:
                    await self.process(events)
                except BaseException:
                    self.rows.clear()  # they may hold klines whose row was never saved: read the rows again
                    raise

    async def process(self, events: Sequence[Any]) -> None:
        """Applies the closed klines of a batch of records; their values are sent, in order, at the batch's end.
        Records of partitions no longer assigned, or taken before the current assignment, are skipped
        (``PartitionWriter.current``), and rows of partitions revoked during the sends are not saved:
        their changelog belongs to the new owner now (an older row written there would undo its work). A
        partition whose local rows are behind its committed input is not processed but rebuilt
        (``streams/marks.py``); each batch saves the marks of its partitions after their rows."""
        events = self.writer.current(events)
        sources = {event.message.tp for event in events}
        checked = await self.marks.checked(sources)
        if checked != sources:
            events = [event for event in events if event.message.tp in checked]
        rows: dict[bytes, Row] = {}
        touched: dict[bytes, tuple[Row, TP]] = {}
        out: list[tuple[bytes, bytes, TP]] = []  # sent a few thousand at a time: a coroutine per value showed
        stale = metrics.INDICATOR_STALE.counts
        sent = metrics.INDICATORS.counts
        topic = self.out.get_topic_name()
        for event in events:
            source = event.message.tp
            if CLOSED_MARK not in (event.value or b""):
                continue  # in-progress updates only (most records while the worker keeps up): nothing to decode
            try:
                klines = kline_decoder.decode(event.value)
            except msgspec.MsgspecError:
                klines, _ = kline_decoder.split(event.value)  # not ours to judge: the kline agent wrote them
            for kline in klines:
                size = self._horizon(kline.interval)
                if not kline.closed or size is None:
                    continue
                key = f"{kline.exchange}.{kline.symbol}".encode()  # the values' bus key too
                row = rows.get(key) or self._row(key, source)
                rows[key] = row  # until it is saved, whatever the cache drops
                series = row.get(kline.interval, size)
                if series.classify(kline) is Update.STALE:
                    stale[(kline.interval,)] += 1
                    continue
                for value in series.update(kline):
                    sent[(value.name,)] += 1
                    out.append((key, encode(value), source))
                touched[key] = (row, source)
                if len(out) >= SEND_EVERY:
                    await self.writer.send_all(topic, out)
                    out = []
        await self.writer.send_all(topic, out)
        await self.writer.flush()  # values acknowledged before the states that produced them are saved
        assigned = self.writer.owned()  # a revocation may have come during the sends
        for key, (row, source) in touched.items():
            if source in assigned:
                await self.writer.save(self.table, key, row.to_bytes(), source)
        done = next_offsets(events)
        await self.marks.save(done)
        await self.writer.commit_input(done)

    def _row(self, key: bytes, source: TP) -> Row:
        row = self.rows.get(key)
        if row is None:
            row = Row(self.table.get(key), self.specs)
            self.rows.put(key, row, source)
        return row

    async def on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        """Partitions are about to move: the batch under way ends (it commits what it processed while the
        partitions are still ours), then the cached rows are dropped: they may change at the new owner."""
        async with self._lock:
            self._forget(revoked)

    def _forget(self, sources: set[TP]) -> None:
        """Drops the cached rows of ``sources``, and nothing more of them is committed until the next assignment:
        on a revocation, and for partitions whose local rows are behind their committed input (``streams/marks.py``)."""
        self.writer.forget(sources)
        self.rows.forget(sources)

    def on_fenced(self, lost: set[TP]) -> None:
        """Another worker took ``lost`` while this one was away: the cached and local rows may hold klines of
        aborted transactions; a partition that comes back is restored from its committed changelog."""
        self.rows.forget(lost)
        for tp in lost:
            faust_internals.discard_partition(self.app, self.table, tp.partition)

    def _horizon(self, interval: str) -> int | None:
        """How many klines of ``interval`` a correction can reach back; None if it names no interval (the kline
        agent writes configured intervals only; anything else is not ours to judge)."""
        if interval not in self._horizons:
            try:
                self._horizons[interval] = horizon(parse_interval(interval).ns, self.max_lateness_ms)
            except ConfigError:
                return None  # not remembered: whatever the input holds, this stays bounded
        return self._horizons[interval]
