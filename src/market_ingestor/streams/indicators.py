"""The indicators agent: closed klines from ``market.klines`` -> ``market.indicators``.

One RocksDB row per ``{exchange}.{symbol}`` (the klines topic's key, so the row lives in the partition of its
klines) holds every interval's indicator states. An indicator replaces its latest input when a corrected kline
(higher revision, same ``open_time``) arrives and ignores older ones, so re-delivered klines after a crash are
harmless. Writes go through :class:`~market_ingestor.streams.outputs.PartitionWriter`, as the kline agent's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust
import msgspec
from faust.types import TP

from market_ingestor.errors import MarketIngestorError
from market_ingestor.model import IndicatorValue, Kline, Topics, bus_key, decoder_for, encode
from market_ingestor.streams import metrics
from market_ingestor.streams.outputs import PartitionWriter, next_offsets
from market_ingestor.tables.indicators import Indicator, from_bytes, parse_spec

kline_decoder = decoder_for(Kline)
_row_encoder = msgspec.msgpack.Encoder()
_row_decoder = msgspec.msgpack.Decoder(dict[str, dict[str, bytes]])

Row = dict[str, dict[str, Indicator]]  # interval -> indicator name -> state


class IndicatorAgent:
    def __init__(
        self, app: faust.App, prefix: str, specs: Sequence[str], batch: int, within_s: float, options: dict[str, int]
    ) -> None:
        self.specs = tuple(specs)
        for spec in self.specs:
            parse_spec(spec)  # a bad spec fails at start, naming it
        # acks=False: the agent commits the offsets of what it processed itself (PartitionWriter.commit_input).
        self.klines = app.topic(prefix + Topics.KLINES, key_type=bytes, value_type=bytes, acks=False)
        self.out = app.topic(prefix + Topics.INDICATORS, key_type=bytes, value_type=bytes)
        self.table = app.Table(
            "indicator-state", default=None, key_type=bytes, value_type=bytes, use_partitioner=True, options=options
        )
        self.writer = PartitionWriter(app)
        self.batch, self.within_s = batch, within_s
        app.agent(self.klines, name="indicators")(self.compute)

    async def compute(self, stream: Any) -> None:
        async for events in self.writer.batches(stream, self.batch, self.within_s):
            await self.process(events)

    async def process(self, events: Sequence[Any]) -> None:
        rows: dict[bytes, Row] = {}
        sources: dict[bytes, TP] = {}
        values: list[tuple[TP, IndicatorValue]] = []
        for event in events:
            try:
                kline = kline_decoder.decode(event.value)
            except msgspec.MsgspecError:
                continue  # not ours to judge: the klines topic carries only what the kline agent wrote
            if not kline.closed:
                continue
            row = rows.get(event.key) or self._load(event.key)
            rows[event.key] = row
            states = row.setdefault(kline.interval, {})
            for spec in self.specs:
                indicator = states.get(spec) or states.setdefault(spec, parse_spec(spec))
                try:
                    value = indicator.update(kline)
                except MarketIngestorError:
                    continue  # an input the indicator refuses (e.g. digits beyond exact arithmetic): skip it
                if value is not None:
                    values.append((event.message.tp, value))
            sources[event.key] = event.message.tp
        sent = metrics.INDICATORS.counts
        for source, value in values:
            sent[(value.name,)] += 1
            await self.writer.send(self.out.get_topic_name(), bus_key(value).encode(), encode(value), source)
        await self.writer.flush()  # values acknowledged before the states that produced them are saved
        for key, source in sources.items():
            await self.writer.save(self.table, key, _encode_row(rows[key]), source)
        await self.writer.commit_input(next_offsets(events))

    def _load(self, key: bytes) -> Row:
        stored = self.table.get(key)
        if stored is None:
            return {}
        return {
            interval: {name: from_bytes(data) for name, data in states.items()}
            for interval, states in _row_decoder.decode(stored).items()
        }


def _encode_row(row: Row) -> bytes:
    return _row_encoder.encode(
        {interval: {name: state.to_bytes() for name, state in states.items()} for interval, states in row.items()}
    )
