"""All indicators of one (instrument, interval), following corrections of older klines within a horizon.

An indicator alone can only revise its latest kline (see the package docstring). The kline aggregator corrects
klines up to ``max_lateness_ms`` back, and re-emits the flat klines that carried a corrected close forward, so a
correction can hit a kline several intervals older than the latest. A ``Series`` keeps, next to the indicators'
state from just before it (``base``), the last ``horizon`` closed klines (``history``, compact ``Bar``s):

- a kline after the latest *appends*: the values come from the current state, which is the base replayed over the
  history (computed when the series is loaded and kept in memory, never stored). The base moves on ``horizon``
  klines at a time, once the history holds twice that many: a copy of the state taken when the history was
  ``horizon`` long (the *mark*) becomes the base, so no kline is applied twice. The history thus holds from
  ``horizon`` to ``2 * horizon - 1`` klines; corrections reach the last ``horizon`` of them, and ``folded`` is
  the ``open_time`` of the kline just before those (older ones are stale, wherever they are);
- a kline of the history (same ``open_time``, revision not lower) *replaces* it, and one between two klines of the
  history (a backward extension of the series, or a gap filled late) is *inserted*: the history is replayed from
  the base, and every value from that kline on that differs from the one emitted before is emitted again;
- anything older than the history, or an older revision of a kline in it, is *stale*: nothing changes.

So after any sequence of klines whose corrections stay within the horizon, the latest value emitted for each
``open_time`` is the one ``compute(spec, final_series)`` gives (exactly: the replay is the same arithmetic). One
exception: a value a correction makes disappear (only VWAP, if a session's volume fell back to zero, which late
trades, adding volume, cannot do) is not retracted.

Revisions of values: the first value for an ``open_time`` carries its kline's revision, as a lone indicator's
does; each re-emission carries ``max(kline revision, last emitted + 1)``, so consumers that keep the highest
revision (the PostgreSQL sink upserts only a higher one; the push gateway keeps the highest) take it.

``horizon(interval_ns, max_lateness_ms)`` is how many klines a correction can reach back, with a margin: a trade
can correct a window that ended up to ``max_lateness_ms`` before the watermark, and the watermark is at least the
end of the latest closed kline.

Serialization: ``to_bytes`` is msgpack ``[base, history, folded]``, each base state the indicator's own
``to_bytes`` (Decimals as exact strings), kept encoded between folds. In memory the history's bars are kept encoded
too (a worker holds a series per instrument and interval; a decoded bar is ~3x the size): a bar is decoded when a
load or a correction replays it. Series written when the base was folded
kline by kline (a history of at most ``horizon`` klines) load the same, and ones written here load there.
``from_indicators`` takes states in the previous per-indicator format: they become the base with an empty
history, so corrections reach back only to klines that arrive from then on.
"""

from __future__ import annotations

import decimal
import operator
from collections.abc import Iterable, Mapping
from decimal import Decimal

import msgspec

from market_ingestor.indicators import from_bytes, parse_spec
from market_ingestor.indicators.base import Indicator, IndicatorInputError, Update, decode_state
from market_ingestor.indicators.core import EXACT
from market_ingestor.model import OHLCV_FIELDS, IndicatorValue, Kline

Values = dict[str, Decimal]
_ohlcv = operator.attrgetter(*OHLCV_FIELDS)


def horizon(interval_ns: int, max_lateness_ms: int) -> int:
    """How many closed klines a ``Series`` of this interval keeps correctable: ceil(lateness / interval) + 2."""
    return -(-max_lateness_ms * 1_000_000 // interval_ns) + 2


class Bar(msgspec.Struct, frozen=True, array_like=True):
    """A closed kline as the indicators read it: an indicator that reads another ``Kline`` field must add it here
    (``test_indicators_read_only_the_fields_a_bar_keeps`` checks that none does)."""

    open_time: int
    revision: int
    emitted: int  # the revision of the values last emitted for this open_time
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal

    @classmethod
    def of(cls, kline: Kline, emitted: int) -> Bar:
        return cls(kline.open_time, kline.revision, emitted, *_ohlcv(kline))

    def same_kline(self, other: Bar) -> bool:
        """The same inputs, digit for digit (``Decimal("1.0") == Decimal("1.00")``, but their sums print apart)."""
        return all(mine.compare_total(theirs) == 0 for mine, theirs in zip(_ohlcv(self), _ohlcv(other), strict=True))

    def kline(self, like: Kline | None = None) -> Kline:
        """A closed kline with this bar's values and ``like``'s identity (named in errors only; indicators do not
        read it); the fields the bar lacks are zero."""
        zero = Decimal(0)
        return Kline(
            exchange=like.exchange if like else "",
            symbol=like.symbol if like else "",
            interval=like.interval if like else "",
            open_time=self.open_time,
            close_time=self.open_time,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            quote_volume=self.quote_volume,
            trade_count=0,
            taker_buy_volume=zero,
            taker_buy_quote_volume=zero,
            first_trade_id=None,
            last_trade_id=None,
            vwap=zero,
            closed=True,
            revision=self.revision,
        )


class _Stored(msgspec.Struct, array_like=True):
    base: dict[str, bytes]  # spec -> the indicator's to_bytes()
    history: list[msgspec.Raw]  # Bars (msgpack), oldest first, at most the horizon
    folded: int | None  # open_time of the latest kline corrections no longer reach; None before the first


class _Kept(msgspec.Struct, frozen=True, gc=False):
    """A bar of the history as a series keeps it: what ``_locate`` reads, and the bar's msgpack (``Bar`` is
    ``array_like``: the same bytes ``_Stored.history`` holds). A decoded ``Bar`` with its six Decimals takes ~700
    bytes, this ~200; bars are decoded only to replay (a load or a correction), and ``to_bytes`` copies them."""

    open_time: int
    revision: int
    packed: bytes

    @classmethod
    def of(cls, bar: Bar) -> _Kept:
        return cls(bar.open_time, bar.revision, _ENCODER.encode(bar))

    def bar(self) -> Bar:
        return _BAR_DECODER.decode(self.packed)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Stored)
_BAR_DECODER = msgspec.msgpack.Decoder(Bar)


class Series:
    """The configured indicators of one (instrument, interval); see the module docstring."""

    def __init__(
        self, specs: Iterable[str], horizon: int, base: Mapping[str, bytes], history: list[Bar], folded: int | None
    ) -> None:
        """``base``: each indicator's ``to_bytes`` (``IndicatorStateError`` if one does not decode)."""
        if horizon < 1:
            raise ValueError(f"a series keeps at least one kline, got horizon {horizon}")
        # Indicators no longer configured are dropped; newly configured ones start fresh from the base.
        self._base = {spec: base[spec] if spec in base else parse_spec(spec).to_bytes() for spec in specs}
        self._history = [_Kept.of(bar) for bar in history]
        self.folded = folded
        self.horizon = horizon
        self._mark: dict[str, Indicator] | None = None  # the state after history[:horizon], once it is that long
        states = self._decode_base()
        if len(history) >= 2 * horizon:  # kept for a longer horizon: the base moves on to the last `horizon`
            cut = len(history) - horizon
            for bar in history[:cut]:
                _apply(states, bar.kline())
            self._base, self.folded, self._history = _encode(states), history[cut - 1].open_time, self._history[cut:]
            history = history[cut:]
        self._current = self._replay(states, 0, history)
        self._reach()

    @classmethod
    def new(cls, specs: Iterable[str], horizon: int) -> Series:
        return cls(specs, horizon, {}, [], None)

    @classmethod
    def from_bytes(cls, data: bytes, specs: Iterable[str], horizon: int) -> Series:
        """Raises ``IndicatorStateError`` for bytes that are not a series."""
        stored: _Stored = decode_state(_DECODER, data)
        history = [decode_state(_BAR_DECODER, raw) for raw in stored.history]
        return cls(specs, horizon, stored.base, history, stored.folded)

    @classmethod
    def from_indicators(cls, states: Mapping[str, Indicator], specs: Iterable[str], horizon: int) -> Series:
        """Indicators stored one by one (the previous format): the base of an empty history."""
        applied = [state.last_open_time for state in states.values() if state.last_open_time is not None]
        return cls(specs, horizon, _encode(states), [], max(applied, default=None))

    @property
    def base(self) -> dict[str, Indicator]:
        """The indicators' state before the history (decoded on each access)."""
        return self._decode_base()

    @property
    def history(self) -> list[Bar]:
        """The klines corrections can reach and those before them since the base (decoded on each access)."""
        return [kept.bar() for kept in self._history]

    def to_bytes(self) -> bytes:
        history = [msgspec.Raw(kept.packed) for kept in self._history]
        return _ENCODER.encode(_Stored(self._base, history, self.folded))

    def classify(self, kline: Kline) -> Update:
        """``APPEND`` after the latest kline; ``REPLACE`` for a kline of the history or one to insert into it;
        ``STALE`` for anything older than the history or an older revision of a kline in it."""
        return self._locate(kline)[0]

    def update(self, kline: Kline) -> list[IndicatorValue]:
        """The values ``kline`` gives or changes, oldest ``open_time`` first (none for a stale kline).

        An indicator that refuses a kline (digits beyond exact arithmetic) skips it, the others go on; the kline
        is kept, so a replay skips it the same way. Raises ``IndicatorInputError`` for a kline that is not closed.
        """
        if not kline.closed:
            raise IndicatorInputError(
                f"the {kline.interval} kline of {kline.exchange} {kline.symbol} opened at {kline.open_time} is not "
                "closed; indicators take closed klines only"
            )
        how, index = self._locate(kline)
        if how is Update.STALE:
            return []
        if how is Update.APPEND:
            values = _apply(self._current, kline)
            self._history.append(_Kept.of(Bar.of(kline, kline.revision)))
            if len(self._history) == self.horizon:
                self._mark = _copy(self._current)
            self._fold()
            return [_value(kline, name, kline.open_time, kline.revision, v) for name, v in values.items() if v]
        return self._revise(kline, index)

    # --- internals ----------------------------------------------------------------------------------------

    def _locate(self, kline: Kline) -> tuple[Update, int]:
        """What ``kline`` means and where it goes in the history; for REPLACE, ``index`` is the kline it replaces
        (same open_time) or the one it goes before."""
        t, history = kline.open_time, self._history
        if self.folded is not None and t <= self.folded:
            return Update.STALE, -1
        if not history or t > history[-1].open_time:
            return Update.APPEND, len(history)
        for index in range(len(history) - 1, -1, -1):
            bar = history[index]
            if bar.open_time == t:
                return (Update.REPLACE if kline.revision >= bar.revision else Update.STALE), index
            if bar.open_time < t:
                return Update.REPLACE, index + 1
        return Update.REPLACE, 0

    def _decode_base(self) -> dict[str, Indicator]:
        return {spec: from_bytes(state) for spec, state in self._base.items()}

    def _replay(self, states: dict[str, Indicator], start: int, bars: list[Bar]) -> dict[str, Indicator]:
        """``states`` (the state before ``history[start]``) after ``bars`` (the rest of the history, decoded);
        takes the mark."""
        for position, bar in enumerate(bars, start):
            _apply(states, bar.kline())
            if position + 1 == self.horizon:
                self._mark = _copy(states)
        return states

    def _state_before(self, index: int) -> dict[str, Indicator]:
        """A copy of the state before ``history[index]``: replayed from the mark or from the base."""
        if self._mark is not None and index >= self.horizon:
            states, start = _copy(self._mark), self.horizon
        else:
            states, start = self._decode_base(), 0
        for kept in self._history[start:index]:
            _apply(states, kept.bar().kline())
        return states

    def _fold(self) -> None:
        """Moves the base on by ``horizon`` klines once the history holds twice that many: the mark (the state
        after the first ``horizon``) becomes the base, so no kline is applied twice."""
        if len(self._history) >= 2 * self.horizon:
            assert self._mark is not None  # taken when the history was `horizon` long
            self._base = _encode(self._mark)
            self.folded = self._history[self.horizon - 1].open_time
            del self._history[: self.horizon]
            self._mark = _copy(self._current)  # the history is `horizon` long again: it never exceeds twice that
        self._reach()

    def _reach(self) -> None:
        """Corrections reach the last ``horizon`` klines; ``folded`` is the one before them (stale from it on)."""
        if len(self._history) > self.horizon:
            self.folded = self._history[-self.horizon - 1].open_time

    def _revise(self, kline: Kline, index: int) -> list[IndicatorValue]:
        kept = self._history
        replaces = index < len(kept) and kept[index].open_time == kline.open_time
        if replaces:
            old = kept[index].bar()
            bar = Bar.of(kline, old.emitted)
            if bar.same_kline(old):  # a re-delivery, or a revision that changed nothing the indicators read
                kept[index] = _Kept.of(bar)
                return []
            following = [k.bar() for k in kept[index + 1 :]]
            sent = [old, *following]
        else:
            bar, following = Bar.of(kline, kline.revision), [k.bar() for k in kept[index:]]
            sent = following
        states = self._state_before(index)
        before = _copy(states)
        emitted = {b.open_time: _apply(before, b.kline(kline)) for b in sent}  # what was sent
        keep_mark = index >= self.horizon  # the mark follows from history[:horizon], unchanged then
        if not keep_mark:
            self._mark = None
        self._history = kept[:index]
        out: list[IndicatorValue] = []
        for later in (bar, *following):
            values, previous = _apply(states, later.kline(kline)), emitted.get(later.open_time)
            changed = {name: v for name, v in values.items() if v and not _same(v, (previous or {}).get(name))}
            if changed and previous is not None:  # sent before: the new values must outrank the old ones
                later = msgspec.structs.replace(later, emitted=max(later.revision, later.emitted + 1))
            self._history.append(_Kept.of(later))
            if len(self._history) == self.horizon and not keep_mark:
                self._mark = _copy(states)
            out += [_value(kline, name, later.open_time, later.emitted, v) for name, v in changed.items()]
        self._current = states
        self._fold()
        return out


def _copy(states: Mapping[str, Indicator]) -> dict[str, Indicator]:
    return {name: indicator.copy() for name, indicator in states.items()}


def _encode(states: Mapping[str, Indicator]) -> dict[str, bytes]:
    return {name: indicator.to_bytes() for name, indicator in states.items()}


def _apply(states: Mapping[str, Indicator], kline: Kline) -> dict[str, Values | None]:
    values: dict[str, Values | None] = {}
    saved = decimal.getcontext()
    decimal.setcontext(EXACT)  # once for all indicators (each would switch to it otherwise)
    try:
        for name, indicator in states.items():
            try:
                values[name] = indicator.step(kline)
            except IndicatorInputError:
                values[name] = None  # refused; its state is unchanged (step is atomic)
    finally:
        decimal.setcontext(saved)
    return values


def _same(a: Values, b: Values | None) -> bool:
    if b is None or a.keys() != b.keys():
        return False
    return all(a[key].compare_total(b[key]) == 0 for key in a)


def _value(kline: Kline, name: str, open_time: int, revision: int, values: Values) -> IndicatorValue:
    return IndicatorValue(
        exchange=kline.exchange,
        symbol=kline.symbol,
        interval=kline.interval,
        name=name,
        open_time=open_time,
        values=values,
        revision=revision,
    )


__all__ = ["Bar", "Series", "horizon"]
