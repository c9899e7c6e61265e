"""What an event is keyed and identified by on the bus: its partition key (``bus_key``) and its identity
(``event_id``, for bus-level deduplication of re-sends)."""

from __future__ import annotations

from collections.abc import Callable

from market_ingestor.model import (
    AnyEvent,
    BookDelta,
    BookSnapshot,
    ConnectorStatus,
    ControlCommand,
    DeadLetter,
    IndicatorValue,
    Kline,
    Quote,
    Trade,
)


def bus_key(event: AnyEvent) -> str:
    """Partition key: one instrument stays ordered on one partition (and one NATS subject)."""
    if isinstance(event, ControlCommand):
        return f"{event.target}.{event.exchange}" + (f".{event.symbol}" if event.symbol else "")
    if isinstance(event, DeadLetter):
        return event.exchange
    if isinstance(event, ConnectorStatus):
        return f"{event.instance}.{event.exchange}"
    return f"{event.exchange}.{event.symbol}"


def _book_seq(event: BookSnapshot | BookDelta) -> str:
    seq = event.seq if isinstance(event, BookSnapshot) else event.last_seq
    return f"{seq}" if seq is not None else f"{event.ts}.{event.recv_ts}"


# The identity of an event: a re-send of the same event gets the same id (bus-level deduplication), two
# different events never share one. In-progress klines carry their trade count so successive updates differ.
_EVENT_ID: dict[type, Callable[..., str]] = {
    Trade: lambda e: f"t.{e.exchange}.{e.symbol}.{e.trade_id}",
    Quote: lambda e: f"q.{e.exchange}.{e.symbol}.{e.ts}.{e.recv_ts}",
    BookSnapshot: lambda e: f"bs.{e.exchange}.{e.symbol}.{_book_seq(e)}",
    BookDelta: lambda e: f"bd.{e.exchange}.{e.symbol}.{_book_seq(e)}",
    Kline: lambda e: (
        f"k.{e.exchange}.{e.symbol}.{e.interval}.{e.open_time}.{e.revision}.{int(e.closed)}.{e.trade_count}"
    ),
    IndicatorValue: lambda e: f"i.{e.exchange}.{e.symbol}.{e.interval}.{e.name}.{e.open_time}.{e.revision}",
    DeadLetter: lambda e: f"d.{e.exchange}.{e.recv_ts}",
    ControlCommand: lambda e: f"c.{e.target}.{e.exchange}.{e.symbol}.{e.action}.{e.ts}",
    ConnectorStatus: lambda e: f"s.{e.instance}.{e.exchange}.{e.ts}",
}


def event_id(event: AnyEvent) -> str:
    return _EVENT_ID[type(event)](event)
