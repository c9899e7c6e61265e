"""Bus records -> updates for clients, and the latest state a new subscriber gets first.

Pure: :func:`to_updates` reads one record of ``market.trades``/``quotes``/``klines``/``indicators`` (a JSON array
of events, ``bus/records.py``) into an update per event: :func:`to_update` validates each event by its typed
decoder and embeds it in the frame as it is, and an event that is not valid is reported and skipped without
holding back the others of its record. :class:`LatestState` keeps, per
(channel, symbol), the newest quote, the newest kline of each interval channel and the newest value of each
indicator per kline interval, in a bounded map that forgets the least recently updated instruments first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import msgspec

from market_ingestor.bus.records import split_events
from market_ingestor.bus.topics import Topics
from market_ingestor.model import IndicatorValue, Kline, Quote, Trade, decoder_for
from market_ingestor.push.protocol import INDICATOR_PREFIX, KLINE_PREFIX, QUOTE, TRADE, Outgoing, Pair, update_message


class Update(NamedTuple):
    pair: Pair  # (channel, symbol)
    message: Outgoing
    conflate: bool  # a newer update of the same pair makes this one worthless (quotes, in-progress klines)
    # Where the latest state keeps it: None for trades; "" for quotes and klines; the interval for indicators.
    slot: str | None
    order: tuple[int, int]  # state keeps the highest; (open_time, revision) for klines and indicators
    # What a closed kline or an indicator value is a revision of: a newer revision of it replaces this one in a
    # client's queue (push/outbox.py); None for the others.
    revision_of: Hashable | None = None


def _trade(event: Trade, value: bytes) -> Update:
    symbol = f"{event.exchange}.{event.symbol}"
    return Update((TRADE, symbol), update_message(TRADE, symbol, value), False, None, (0, 0))


def _quote(event: Quote, value: bytes) -> Update:
    symbol = f"{event.exchange}.{event.symbol}"
    return Update((QUOTE, symbol), update_message(QUOTE, symbol, value), True, "", (0, 0))


def _kline(event: Kline, value: bytes) -> Update:
    symbol, channel = f"{event.exchange}.{event.symbol}", KLINE_PREFIX + event.interval
    # A closed kline ranks above the in-progress updates of its window; a revision above both.
    order = (event.open_time, 2 * event.revision + int(event.closed))
    pair = (channel, symbol)
    revision_of = (pair, event.open_time) if event.closed else None
    return Update(pair, update_message(channel, symbol, value), not event.closed, "", order, revision_of)


def _indicator(event: IndicatorValue, value: bytes) -> Update:
    symbol, channel = f"{event.exchange}.{event.symbol}", INDICATOR_PREFIX + event.name
    order = (event.open_time, event.revision)
    pair = (channel, symbol)
    revision_of = (pair, event.interval, event.open_time)
    return Update(pair, update_message(channel, symbol, value), False, event.interval, order, revision_of)


_Handler = tuple[msgspec.json.Decoder[Any], Callable[[Any, bytes], Update]]
_BY_TOPIC: dict[str, _Handler] = {
    Topics.TRADES: (decoder_for(Trade), _trade),
    Topics.QUOTES: (decoder_for(Quote), _quote),
    Topics.KLINES: (decoder_for(Kline), _kline),
    Topics.INDICATORS: (decoder_for(IndicatorValue), _indicator),
}
TOPICS: tuple[str, ...] = tuple(_BY_TOPIC)


def to_update(topic: str, value: bytes) -> Update:
    """One event of the logical ``topic`` (without the configured prefix). Raises ``msgspec.DecodeError`` or
    ``msgspec.ValidationError`` (naming the bad field) for an event that is not the topic's type, ``KeyError``
    for a topic the gateway does not read."""
    decoder, build = _BY_TOPIC[topic]
    return build(decoder.decode(value), value)


def to_updates(topic: str, value: bytes) -> tuple[list[Update], list[str]]:
    """The updates of one record of the logical ``topic``, in order, and why each event that is not the topic's
    type was skipped (one reason for a record that is not JSON at all). ``KeyError`` for a topic the gateway
    does not read."""
    try:
        events = split_events(value)
    except msgspec.DecodeError as exc:
        return [], [f"not JSON: {exc}"]
    updates: list[Update] = []
    problems: list[str] = []
    for event in events:
        try:
            updates.append(to_update(topic, event))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            problems.append(str(exc))
    return updates, problems


class _Held(NamedTuple):
    order: tuple[int, int]
    message: Outgoing
    conflate: bool


class LatestState:
    """The newest messages per (channel, symbol) and slot, at most ``max_pairs`` pairs (least recently updated
    forgotten first)."""

    def __init__(self, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        self._pairs: OrderedDict[Pair, dict[str, _Held]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs)

    def offer(self, update: Update) -> None:
        if update.slot is None:
            return
        slots = self._pairs.get(update.pair)
        if slots is None:
            if len(self._pairs) >= self.max_pairs:
                self._pairs.popitem(last=False)
            slots = self._pairs[update.pair] = {}
        else:
            self._pairs.move_to_end(update.pair)
        held = slots.get(update.slot)
        # Records of one instrument arrive in order; only a late correction of an older window can be older.
        if held is None or update.order >= held.order:
            slots[update.slot] = _Held(update.order, update.message, update.conflate)

    def messages(self, pair: Pair) -> list[tuple[Outgoing, bool]]:
        """The held messages of ``pair`` with their conflate flag (one per slot, slots in name order)."""
        slots = self._pairs.get(pair)
        if not slots:
            return []
        return [(held.message, held.conflate) for _, held in sorted(slots.items())]
