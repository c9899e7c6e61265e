"""The live ticker on Kafka: the latest trade and the best bid/ask of every instrument, held in a Faust table
(the state and its update rule are in ``ticker_state.py``, shared with the NATS ticker of ``ticker_nats.py``).

Why a ``GlobalTable`` on the in-memory store: API instances are stateless replicas behind a load balancer, and
each must answer for every instrument. A ``GlobalTable`` gives every instance all partitions of the table, read
from its compacted changelog at start (the readiness condition) and followed from then on, while the ``ticker``
agent's source partitions (``market.trades`` + ``market.quotes``, co-partitioned by instrument) are shared out
among the instances of the consumer group ``{streams.app_id}-api``: each instrument is written by exactly one
instance and read by all of them. The state is small (one row per instrument) and the changelog holds it, so
the in-memory store suffices and an instance needs no disk; a restart re-reads the changelog. Compared with a
per-instance in-memory map fed by a follower, this serves at start what was current before (a quiet instrument
keeps its last trade), and each instance reads one row per instrument update instead of the whole trade and
quote flow.

Faust's advice for a ``GlobalTable`` used by several instances is one changelog partition and a recovery buffer
of one (faust-streaming's GlobalTable docstring), which we follow. An instance also re-reads its own writes
from the changelog, slightly after making them; the instruments it owns are therefore served from
:attr:`TickerTable.owned`, the authoritative latest state, and only the others from the table.

Writes are coalesced: the agent takes records (each a JSON array of trades or quotes, ``bus/records.py``) in
batches of up to ``ticker_flush_s`` and writes each touched instrument once per batch. "Latest" is by exchange
time (:meth:`TickerState.updated`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import faust
import msgspec

from market_ingestor.api.ticker_state import TickerState, TickerUpdates
from market_ingestor.bus.faust import internals as faust_internals
from market_ingestor.bus.faust.app import StreamApp
from market_ingestor.bus.topics import Topics
from market_ingestor.config import Config
from market_ingestor.jsontext import JsonEncoder

# A quiet partition's long poll must not delay a busy one's next fetch: the ticker is about freshness.
TICKER_FETCH_MAX_WAIT_MS = 100
# Keep the changelog close to one record per instrument, so that a starting instance reads little.
CHANGELOG_CONFIG = {"segment.ms": 600_000, "min.cleanable.dirty.ratio": 0.1, "delete.retention.ms": 600_000}


_state_encoder = JsonEncoder()
_state_decoder = msgspec.json.Decoder(TickerState)


class TickerTable:
    """The Faust side: the ``ticker`` agent and its ``GlobalTable``; see the module docstring."""

    def __init__(self, app: faust.App, config: Config) -> None:
        prefix = config.bus.topic_prefix
        self.app = app
        self.flush_s = config.api.ticker_flush_s
        self.source = app.topic(prefix + Topics.TRADES, prefix + Topics.QUOTES, key_type=bytes, value_type=bytes)
        self.table = app.GlobalTable(
            "ticker",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=1,
            recovery_buffer_size=1,
            use_partitioner=True,
            extra_topic_configs=CHANGELOG_CONFIG,
        )
        self.owned: dict[str, TickerState] = {}
        self.updates = TickerUpdates()
        app.agent(self.source, name="ticker")(self.follow)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]

    @property
    def recovered(self) -> bool:
        return faust_internals.recovery_completed(self.app)

    def get(self, key: str) -> TickerState | None:
        state = self.owned.get(key)
        if state is not None:
            return state
        stored = self.table.get(key.encode())
        return _state_decoder.decode(stored) if stored is not None else None

    def instruments(self) -> Iterator[str]:
        yield from {*self.owned, *(key.decode() for key in self.table)}

    async def follow(self, stream: Any) -> None:
        async for events in stream.take_events(10_000, within=self.flush_s):
            self.apply(event.value for event in events)

    def apply(self, values: Iterable[bytes]) -> None:
        """Record values of the trades and quotes topics, each an array of events, in order."""
        touched = self.updates.fold(values, self.get)
        self.owned.update(touched)
        for key, state in touched.items():
            self.table[key.encode()] = _state_encoder.encode(state)

    async def on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        """Source partitions moved: their instruments are now written, and served fresh, by another instance."""
        if any(tp.topic in self.source.topics for tp in revoked):
            self.owned.clear()


def build_ticker_app(config: Config, data_dir: str) -> tuple[faust.App, TickerTable]:
    """The Faust app of the ticker; ``data_dir`` is scratch space (Faust wants a directory even for in-memory
    tables: the caller passes a temporary one and removes it afterwards)."""
    kafka = config.bus.kafka
    app = StreamApp.on_kafka(
        f"{config.streams.app_id}-api",
        kafka,
        store="memory://",
        datadir=data_dir,
        # A new deployment starts at the live edge: the ticker needs no history, only what happens next.
        consumer_auto_offset_reset="latest",
        broker_commit_interval=1.0,
        read_committed=True,  # never show a trade of an aborted transaction
        fetch_max_wait_ms=TICKER_FETCH_MAX_WAIT_MS,
    )
    return app, TickerTable(app, config)
