"""Kline aggregation: a pure, serializable state machine per instrument, shared by the stream worker, the offline
``klines`` command and the tests (the initialize / agg / result triad: ``new`` / ``apply`` / the emitted klines).

API::

    settings = KlineSettings(intervals=("1m", "5m", "15m", "1h", "4h", "1d"), grace_ms=2000,
                             max_lateness_ms=600_000, update_interval_ms=250)
    state = InstrumentKlines.new("binance", "BTCUSDT", settings)
    state.apply(trade, position=None, wall_ns=None) -> Applied   # closed/flat/corrected klines the trade caused
    state.on_time(now_wall_ns) -> list[Kline]                    # closes windows of quiet instruments
    state.in_progress(now_wall_ns) -> list[Kline]                # throttled closed=False updates
    state.flush() -> list[Kline]                                 # end of input: close everything
    state.to_bytes() / InstrumentKlines.from_bytes(data, settings)
    aggregate(trades, settings) -> Iterator[Kline]               # the whole thing for a finite input

Every call returns klines per interval in ascending ``open_time`` (intervals shortest first); callers emit the
closed ones (``apply``/``on_time``) before the in-progress ones.

Semantics
- Windows: see :mod:`market_ingestor.windows` (UTC-aligned, weeks start on Monday).
- Event time: the *watermark* is the largest trade ``ts`` seen for the instrument. A window closes when the
  watermark passes ``close_time + grace``. ``on_time`` extrapolates the watermark of a quiet instrument by the wall
  time elapsed since its last trade (anchored by ``apply(..., wall_ns=)`` or, failing that, by the first
  ``on_time`` call after the trade), so a closed kline comes out about one tick after ``end + grace``. The anchor
  is not persisted: after ``from_bytes`` it re-anchors, so a restart never closes a window early.
- Out-of-order trades land in their window while it is open. A trade for a closed window is *late*: it corrects
  that window and the kline is emitted again with ``revision + 1`` (flat klines that carried its close forward are
  corrected too). A trade older than the correction horizon (the bucket holding it, see Speed, ended more
  than ``max_lateness_ms`` before the watermark) is *too late*: ``Applied.too_late`` with a ``reason``, applied to no
  interval at all -- a trade is in every interval's klines or in none, so 1m volumes always add up to 1h volumes.
  A trade before the instrument's first trade but within the horizon extends the series backwards (revision 0).
- Gaps: a window without trades, once over and after the instrument's first trade, yields a flat kline: the
  previous close as open/high/low/close/vwap, zero volumes, ``trade_count`` 0, trade ids ``None``.
- ``open``/``close`` and ``first_trade_id``/``last_trade_id`` are the earliest and latest trades by ``ts``; among
  trades with the same ``ts`` the one applied first opens and the one applied last closes (a stable sort of the
  input by ``ts``). Binance orders by trade id instead; ids are not comparable across exchanges, timestamps are.
- Exact decimals: sums and ``price * qty`` use a context with the maximum precision (nothing is ever rounded;
  a trap makes any rounding an error). ``vwap = quote_volume / volume`` computed in ``Context(prec=34,
  rounding=ROUND_HALF_EVEN)``: the quotient rounded half-even to 34 significant digits; an exact quotient keeps
  Python's ideal exponent (``10 / 4 = 2.5``). To match in SQL, round the numeric quotient to 34 significant digits
  half-even (or compare numerically). Zero volume: ``vwap = close``.
- Input: ``apply`` expects a valid trade (``validity.trade_problem(trade) is None``: finite prices > 0,
  quantities >= 0).
  The exchange parsers guarantee more than that; a consumer of a topic anyone can write checks it first.
- Idempotence: ``apply(trade, position)`` with the trade's Kafka offset ignores positions at or below the last
  one applied (``Applied.duplicate``); too-late trades advance the position too (they are answered once).
- Configuration changes: ``from_bytes`` under other intervals keeps the kept intervals' windows, drops removed
  ones and starts an added one at its first window after the stored watermark (earlier windows would miss trades
  that are no longer held), logged once per change.
- Speed: a trade is added to its bucket only (the gcd of the intervals, one minute for the defaults); longer
  windows are folded from closed buckets, and Klines are built only when emitted. Run batches of ``apply`` inside
  ``with exact_context():`` (not across a ``yield``); outside it each call switches the decimal context itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    getcontext,
    localcontext,
    setcontext,
)
from itertools import islice
from typing import Annotated, ParamSpec, TypeVar

import msgspec

from market_ingestor.errors import ConfigError, MarketIngestorError
from market_ingestor.model import Kline, Trade
from market_ingestor.windows import (
    Interval,
    bucket_ns,
    closes_after_ns,
    format_ns,
    parse_intervals,
    window_open,
)

log = logging.getLogger(__name__)

__all__ = ["Applied", "InstrumentKlines", "KlineSettings", "aggregate", "exact_context"]

# Add and multiply are exact at maximum precision; the traps turn any surprise into an error, never a rounding.
_EXACT = Context(
    prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact]
)
_VWAP = Context(prec=34, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
_ZERO = Decimal(0)
_NO_TS = -(2**63)  # "no trade yet": below any int64 nanosecond timestamp
_NEVER = 2**63
_END_OF_TIME = 2**62  # the watermark after flush(): every later trade is too late
_FORMAT = 1  # version of the to_bytes layout

DEFAULT_INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


def exact_context() -> AbstractContextManager[Context]:
    """The decimal context the aggregation runs in; entering it once per batch saves a switch per trade.

    Only add, multiply and compare in it: at maximum precision an inexact division would not terminate.
    """
    return localcontext(_EXACT)


P = ParamSpec("P")
R = TypeVar("R")


def _exact(method: Callable[P, R]) -> Callable[P, R]:
    """Runs ``method`` in the exact context unless the caller already entered one."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        saved = getcontext()
        if saved.prec >= MAX_PREC:
            return method(*args, **kwargs)
        setcontext(_EXACT)  # cheaper than localcontext(), which copies the context
        try:
            return method(*args, **kwargs)
        finally:
            setcontext(saved)

    return wrapper


class KlineSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What to aggregate and how long to wait; a config section as it stands (validated on construction)."""

    intervals: tuple[str, ...] = DEFAULT_INTERVALS
    grace_ms: NonNegativeInt = 2000  # a window closes when the watermark passes its end + grace
    max_lateness_ms: NonNegativeInt = 600_000  # closed windows stay correctable this long after their end
    update_interval_ms: NonNegativeInt = 250  # at most one in-progress update per interval this often

    def __post_init__(self) -> None:
        if not isinstance(self.intervals, tuple):  # a list from Python code: keep the settings hashable
            msgspec.structs.force_setattr(self, "intervals", tuple(self.intervals))
        _plan(self)  # raises ConfigError naming the bad value

    def parsed_intervals(self) -> tuple[Interval, ...]:
        """The intervals parsed, shortest first."""
        return _plan(self).intervals


class _Plan(msgspec.Struct, frozen=True):
    intervals: tuple[Interval, ...]
    bucket_ns: int
    grace_ns: int
    lateness_ns: int
    update_ns: int


@functools.lru_cache(maxsize=64)
def _plan(settings: KlineSettings) -> _Plan:
    for name in ("grace_ms", "max_lateness_ms", "update_interval_ms"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"kline setting {name} must be >= 0, got {getattr(settings, name)}")
    intervals = parse_intervals(settings.intervals)
    ms = 1_000_000
    return _Plan(
        intervals, bucket_ns(intervals), settings.grace_ms * ms, settings.max_lateness_ms * ms,
        settings.update_interval_ms * ms,
    )  # fmt: skip


def _names(plan: _Plan) -> tuple[str, ...]:
    return tuple(interval.name for interval in plan.intervals)


class Applied(msgspec.Struct, frozen=True):
    """What one trade did: the klines to emit now (closed, flat or corrected) and how it was classified."""

    klines: tuple[Kline, ...] = ()
    late: bool = False  # it corrected at least one already closed kline (emitted here with revision + 1)
    too_late: bool = False  # beyond the correction horizon: applied nowhere, dead-letter it with ``reason``
    duplicate: bool = False  # its position was already applied
    reason: str | None = None


_ACCEPTED = Applied()
_DUPLICATE = Applied(duplicate=True)


# --- persisted state -------------------------------------------------------------------------------------------


class _Agg(msgspec.Struct, array_like=True, gc=False):
    """The running aggregate of one window or bucket (its open_time is the key it is stored under)."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    buy_volume: Decimal
    buy_quote_volume: Decimal
    count: int
    first_ts: int  # ts of the trade that set open / first_id
    last_ts: int  # ts of the trade that set close / last_id
    first_id: str | None
    last_id: str | None
    revision: int = 0


class _Level(msgspec.Struct, array_like=True, gc=False):
    """One interval's windows. Every window before ``next_open`` (and after the first trade) is closed."""

    next_open: int | None = None  # the earliest window not yet closed; None before the first trade
    open: dict[int, _Agg] = msgspec.field(default_factory=dict)  # closed buckets folded in, plus late trades
    closed: dict[int, _Agg] = msgspec.field(default_factory=dict)  # correctable ones, and always the last one
    # An interval added to the configuration of an instrument with history starts at its first window after the
    # watermark of that moment (earlier windows would miss trades): its series has no window before ``begin``.
    # ``closed[begin - ns]`` then carries the last price forward, for a flat first window; it is never emitted.
    begin: int | None = None


class _State(msgspec.Struct, array_like=True):
    format: int
    exchange: str
    symbol: str
    intervals: tuple[str, ...]  # names, shortest first (the config's order does not matter)
    levels: list[_Level]  # one per interval, in the same order
    buckets: dict[int, _Agg] = msgspec.field(default_factory=dict)  # open buckets: trades land here
    position: int | None = None  # the last applied position (Kafka offset)
    start: int | None = None  # the earliest bucket that ever held a trade
    max_ts: int = _NO_TS  # the largest trade ts
    watermark: int = _NO_TS  # max_ts, or more by wall-clock extrapolation or flush()


_encoder = msgspec.msgpack.Encoder()  # Decimal as its exact string
_decoder = msgspec.msgpack.Decoder(_State)


def _agg_of(trade: Trade, pq: Decimal) -> _Agg:
    price, qty, ts, tid = trade.price, trade.qty, trade.ts, trade.trade_id
    buy = trade.side == "buy"
    return _Agg(price, price, price, price, qty, pq, qty if buy else _ZERO, pq if buy else _ZERO, 1, ts, ts, tid, tid)


def _flat(price: Decimal) -> _Agg:
    return _Agg(price, price, price, price, _ZERO, _ZERO, _ZERO, _ZERO, 0, 0, 0, None, None)


def _add(agg: _Agg, trade: Trade, pq: Decimal) -> None:
    """Adds one trade (the slow paths' version of the loop in ``apply``); a flat window becomes a real one."""
    if agg.count == 0:
        fresh = _agg_of(trade, pq)
        for field in _Agg.__struct_fields__:
            if field != "revision":
                setattr(agg, field, getattr(fresh, field))
        return
    price, ts = trade.price, trade.ts
    if ts >= agg.last_ts:
        agg.close, agg.last_ts, agg.last_id = price, ts, trade.trade_id
    elif ts < agg.first_ts:
        agg.open, agg.first_ts, agg.first_id = price, ts, trade.trade_id
    if price > agg.high:
        agg.high = price
    elif price < agg.low:
        agg.low = price
    agg.volume += trade.qty
    agg.quote_volume += pq
    agg.count += 1
    if trade.side == "buy":
        agg.buy_volume += trade.qty
        agg.buy_quote_volume += pq


def _merge(into: _Agg, other: _Agg) -> None:
    """Folds ``other`` (a bucket) into ``into``; both hold trades."""
    if other.first_ts < into.first_ts:
        into.open, into.first_ts, into.first_id = other.open, other.first_ts, other.first_id
    if other.last_ts >= into.last_ts:
        into.close, into.last_ts, into.last_id = other.close, other.last_ts, other.last_id
    if other.high > into.high:
        into.high = other.high
    if other.low < into.low:
        into.low = other.low
    into.volume += other.volume
    into.quote_volume += other.quote_volume
    into.buy_volume += other.buy_volume
    into.buy_quote_volume += other.buy_quote_volume
    into.count += other.count


# --- the state machine -----------------------------------------------------------------------------------------


class InstrumentKlines:
    """All intervals of one (exchange, symbol). Not thread-safe; one instance per instrument."""

    def __init__(self, state: _State, settings: KlineSettings) -> None:
        plan = _plan(settings)
        if state.intervals != _names(plan):
            state = _with_intervals(state, plan)
        self._s = state
        # Per interval, with the offset past a window's open time at which it closes (windows.closes_after_ns).
        self._levels = tuple(
            (interval, level, interval.closes_after_ns(plan.grace_ns))
            for interval, level in zip(plan.intervals, state.levels, strict=True)
        )
        self._bucket_ns = plan.bucket_ns
        self._bucket_closes_after_ns = closes_after_ns(plan.bucket_ns, plan.grace_ns)
        self._bucket_horizon_ns = closes_after_ns(plan.bucket_ns, plan.lateness_ns)  # correctable until then
        self._lateness_ns = plan.lateness_ns
        self._update_ns = plan.update_ns
        # Not persisted: the cached current bucket, the next closing deadline, the wall-clock anchor and the
        # in-progress throttle, all rebuilt or re-anchored after a restore.
        self._cur: _Agg = _flat(_ZERO)
        self._cur_open: int | None = None
        self._deadline = self._next_deadline()
        self._anchor_ts = _NO_TS
        self._anchor_wall: int | None = None
        self._changes = 0  # trades applied by this instance; a cheap "anything new?" for in_progress
        self._sent_changes = [-1] * len(self._levels)
        self._sent_wall: list[int | None] = [None] * len(self._levels)
        self._sent_counts: list[dict[int, int]] = [{} for _ in self._levels]

    @classmethod
    def new(cls, exchange: str, symbol: str, settings: KlineSettings) -> InstrumentKlines:
        names = _names(_plan(settings))
        return cls(_State(_FORMAT, exchange, symbol, names, [_Level() for _ in names]), settings)

    @classmethod
    def from_bytes(cls, data: bytes, settings: KlineSettings) -> InstrumentKlines:
        try:
            state = _decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise MarketIngestorError(f"stored kline state cannot be decoded ({exc}); it is corrupt") from exc
        if state.format != _FORMAT:
            raise MarketIngestorError(f"stored kline state has format {state.format}, this version reads {_FORMAT}")
        return cls(state, settings)

    def to_bytes(self) -> bytes:
        return _encoder.encode(self._s)

    @property
    def exchange(self) -> str:
        return self._s.exchange

    @property
    def symbol(self) -> str:
        return self._s.symbol

    @property
    def watermark(self) -> int | None:
        return None if self._s.watermark == _NO_TS else self._s.watermark

    @property
    def position(self) -> int | None:
        return self._s.position

    # --- trades ----------------------------------------------------------------------------------------------

    def apply(self, trade: Trade, position: int | None = None, wall_ns: int | None = None) -> Applied:
        """Adds a trade; returns the klines it closed (and flat or corrected ones) and its classification.

        ``position``: the trade's monotonically increasing offset, for at-least-once redelivery.
        ``wall_ns``: the wall clock now, to anchor ``on_time``'s extrapolation exactly at this trade.
        """
        saved = getcontext()
        if saved.prec < MAX_PREC:
            setcontext(_EXACT)
            try:
                return self.apply(trade, position, wall_ns)
            finally:
                setcontext(saved)
        s = self._s
        if position is not None:
            if s.position is not None and position <= s.position:
                return _DUPLICATE
            s.position = position
        ts = trade.ts
        opened = ts - ts % self._bucket_ns  # window_open(ts, bucket), written out: this runs per trade
        if opened == self._cur_open:
            b = self._cur
        else:
            found = s.buckets.get(opened)
            if found is None:
                return self._apply_outside(trade, opened, wall_ns)
            b = self._cur = found
            self._cur_open = opened
        # The hot path: the same as _add(), inlined, on a bucket that already holds trades.
        price = trade.price
        qty = trade.qty
        pq = price * qty
        if ts >= b.last_ts:
            b.close = price
            b.last_ts = ts
            b.last_id = trade.trade_id
        elif ts < b.first_ts:
            b.open = price
            b.first_ts = ts
            b.first_id = trade.trade_id
        if price > b.high:
            b.high = price
        elif price < b.low:
            b.low = price
        b.volume += qty
        b.quote_volume += pq
        b.count += 1
        if trade.side == "buy":
            b.buy_volume += qty
            b.buy_quote_volume += pq
        self._changes += 1
        if ts > s.max_ts:
            return self._advance(ts, wall_ns)
        return _ACCEPTED

    def _advance(self, ts: int, wall_ns: int | None) -> Applied:
        """A trade with a new largest ts: move the watermark, close what it passed."""
        s = self._s
        s.max_ts = ts
        if wall_ns is not None:
            self._anchor_ts, self._anchor_wall = ts, wall_ns
        if ts > s.watermark:
            s.watermark = ts
            if ts > self._deadline:
                return Applied(tuple(self._close_due()))
        return _ACCEPTED

    def _apply_outside(self, trade: Trade, opened: int, wall_ns: int | None) -> Applied:
        """A trade for a bucket that holds no trades yet: a new bucket, or a late trade if the bucket is closed."""
        s = self._s
        if opened + self._bucket_closes_after_ns < s.watermark:
            return self._apply_late(trade, opened)
        bucket = _agg_of(trade, trade.price * trade.qty)
        s.buckets[opened] = self._cur = bucket
        self._cur_open = opened
        self._deadline = min(self._deadline, opened + self._bucket_closes_after_ns)
        for interval, level, closes_after in self._levels:
            # Windows are aligned: the bucket's window is before next_open only if the bucket is.
            if (level.next_open is None or opened < level.next_open) and (level.begin is None or opened >= level.begin):
                self._reopen(level, interval.open_time(opened), closes_after)
        if s.start is None or opened < s.start:
            s.start = opened
        self._changes += 1
        return self._advance(trade.ts, wall_ns) if trade.ts > s.max_ts else _ACCEPTED

    def _reopen(self, level: _Level, window: int, closes_after: int) -> None:
        """``window`` (not closed) has trades: the level's closing starts there if it is the earliest."""
        if level.next_open is None or window < level.next_open:
            level.next_open = window
            self._deadline = min(self._deadline, window + closes_after)

    def _apply_late(self, trade: Trade, opened: int) -> Applied:
        s = self._s
        assert s.start is not None  # a closed bucket means a trade came before
        if opened + self._bucket_horizon_ns < s.watermark:
            return Applied(too_late=True, reason=self._too_late_reason(trade, opened))
        pq = trade.price * trade.qty
        out: list[Kline] = []
        late = False
        for interval, level, closes_after in self._levels:
            window = interval.open_time(trade.ts)
            if level.begin is not None and window < level.begin:
                continue  # before an added interval's first window
            if window + closes_after >= s.watermark:  # still open at this interval
                agg = level.open.get(window)
                if agg is None:
                    level.open[window] = _agg_of(trade, pq)
                else:
                    _add(agg, trade, pq)
                self._reopen(level, window, closes_after)
            elif window < interval.open_time(s.start):
                late = True
                first = interval.open_time(s.start)
                out += self._prepend(interval, level, closes_after, window, first, _agg_of(trade, pq))
            else:
                late = True
                out += self._correct(interval, level, window, trade, pq)
        s.start = min(s.start, opened)
        self._changes += 1
        return Applied(tuple(out), late=late)

    def _prepend(
        self, interval: Interval, level: _Level, closes_after: int, window: int, first: int, agg: _Agg
    ) -> list[Kline]:
        """A closed window before the series' first one: it and the closed gap up to the first are new klines."""
        level.closed[window] = agg
        out = [self._kline(interval, window, agg, True)]
        for gap in range(window + interval.ns, first, interval.ns):
            if gap + closes_after >= self._s.watermark:
                self._reopen(level, gap, closes_after)  # not over yet: closes in order later, as a flat kline
                break
            level.closed[gap] = flat = _flat(agg.close)
            out.append(self._kline(interval, gap, flat, True))
        return out

    def _correct(self, interval: Interval, level: _Level, window: int, trade: Trade, pq: Decimal) -> list[Kline]:
        """A late trade for an emitted kline: re-emit it, and the flat klines that carried its close forward."""
        agg = level.closed[window]  # present: the horizon check keeps every window a correctable trade can hit
        old_close = agg.close
        _add(agg, trade, pq)
        agg.revision += 1
        out = [self._kline(interval, window, agg, True)]
        if agg.close.compare_total(old_close) != 0:
            assert level.next_open is not None
            gap = window + interval.ns
            while gap < level.next_open and (flat := level.closed.get(gap)) is not None and flat.count == 0:
                flat.open = flat.high = flat.low = flat.close = agg.close
                flat.revision += 1
                out.append(self._kline(interval, gap, flat, True))
                gap += interval.ns
        return out

    def _too_late_reason(self, trade: Trade, opened: int) -> str:
        if self._s.watermark == _END_OF_TIME:
            return f"trade {trade.trade_id} came after the end of input (flush)"
        return (
            f"trade {trade.trade_id} at {format_ns(trade.ts)} is too late to correct its klines: its window ended "
            f"at {format_ns(opened + self._bucket_ns)}, more than max_lateness_ms={self._lateness_ns // 1_000_000} "
            f"before the watermark {format_ns(self._s.watermark)}"
        )

    # --- closing ---------------------------------------------------------------------------------------------

    def _close_due(self, last_trade_window: bool = False) -> list[Kline]:
        """Closes every bucket and window the watermark passed, in time order; flat-fills the gaps.

        ``last_trade_window``: stop at the window holding the last trade (flush(), whose watermark is infinite).
        """
        s = self._s
        watermark, bucket_closes_after = s.watermark, self._bucket_closes_after_ns
        due = sorted(opened for opened in s.buckets if opened + bucket_closes_after < watermark)
        for opened in due:
            bucket = s.buckets.pop(opened)
            for interval, level, _ in self._levels:
                window = interval.open_time(opened)
                if level.begin is not None and window < level.begin:
                    _merge(level.closed[level.begin - interval.ns], bucket)  # only its close is ever read
                    continue
                partial = level.open.get(window)
                if partial is None:
                    level.open[window] = msgspec.structs.replace(bucket)
                else:
                    _merge(partial, bucket)
        if due:
            self._cur_open = None
        out: list[Kline] = []
        for interval, level, closes_after in self._levels:
            if level.next_open is None or level.next_open + closes_after >= watermark:
                continue  # nothing of this interval closes (nor can anything new expire: it is done at closes)
            window = level.next_open
            last = interval.open_time(s.max_ts) if last_trade_window else _NEVER
            while window + closes_after < watermark and window <= last:
                agg = level.open.pop(window, None)
                if agg is None:  # no trade: carry the previous close forward (it is always kept)
                    agg = _flat(level.closed[window - interval.ns].close)
                level.closed[window] = agg
                out.append(self._kline(interval, window, agg, True))
                window += interval.ns
            level.next_open = window
            self._expire(interval, level)
        self._deadline = self._next_deadline()
        return out

    def _expire(self, interval: Interval, level: _Level) -> None:
        """Forget closed windows no trade can correct any more (keeping the last one, for flat fills)."""
        assert level.next_open is not None
        oldest_kept = self._s.watermark - interval.closes_after_ns(self._lateness_ns)
        last = level.next_open - interval.ns
        for window in [w for w in level.closed if w < oldest_kept and w != last]:
            del level.closed[window]

    def _next_deadline(self) -> int:
        """The watermark beyond which the next bucket or window closes."""
        s, bucket_closes_after = self._s, self._bucket_closes_after_ns
        deadline = min((opened + bucket_closes_after for opened in s.buckets), default=_NEVER)
        for _, level, closes_after in self._levels:
            if level.next_open is not None:
                deadline = min(deadline, level.next_open + closes_after)
        return deadline

    @_exact
    def on_time(self, now_wall_ns: int) -> list[Kline]:
        """Advances the watermark of a quiet instrument by wall time since its last trade; returns what closed."""
        s = self._s
        if s.start is None:
            return []
        if self._anchor_wall is None or self._anchor_ts != s.max_ts:
            self._anchor_ts, self._anchor_wall = s.max_ts, now_wall_ns
            return []
        watermark = s.max_ts + (now_wall_ns - self._anchor_wall)
        if watermark <= s.watermark:
            return []
        s.watermark = watermark
        return self._close_due() if watermark > self._deadline else []

    @_exact
    def flush(self) -> list[Kline]:
        """End of input: closes every window as if the watermark were infinite, up to the last trade's window.

        Later trades are all too late; the state is final.
        """
        if self._s.start is None:
            return []
        self._s.watermark = _END_OF_TIME
        return self._close_due(last_trade_window=True)

    # --- output ----------------------------------------------------------------------------------------------

    @_exact
    def in_progress(self, now_wall_ns: int) -> list[Kline]:
        """The open klines (``closed=False``) that changed since their interval's last update, at most one update
        per interval every ``update_interval_ms``.

        Runs per touched instrument and batch (six klines each with the default intervals): a window's trade count
        tells whether it changed, and its view (its folded part plus its open buckets) is built only then, copied
        only when there is something to merge."""
        out: list[Kline] = []
        changes = self._changes
        buckets = self._s.buckets
        opened_order = sorted(buckets) if len(buckets) > 1 else list(buckets)
        # The common case (a live instrument): one open bucket. Its window in each level is that level's only open
        # window or has none folded yet; the general loop below gives the same klines with more bookkeeping.
        only = buckets[opened_order[0]] if len(opened_order) == 1 else None
        for index, (interval, level, _) in enumerate(self._levels):
            sent_wall = self._sent_wall[index]
            if self._sent_changes[index] == changes or (
                sent_wall is not None and now_wall_ns - sent_wall < self._update_ns
            ):
                continue
            if only is not None and len(level.open) <= 1:
                opened = opened_order[0]
                window = opened - (opened - interval.offset_ns) % interval.ns  # interval.open_time(opened)
                partial = level.open.get(window)
                if (level.begin is None or window >= level.begin) and (partial is not None or not level.open):
                    count = only.count if partial is None else partial.count + only.count
                    if self._sent_counts[index].get(window) != count:
                        merged = only  # read only, unless a folded part is there to merge into
                        if partial is not None:
                            merged = msgspec.structs.replace(partial)
                            _merge(merged, only)
                        out.append(self._kline(interval, window, merged, False))
                        self._sent_wall[index] = now_wall_ns
                    self._sent_counts[index] = {window: count}
                    self._sent_changes[index] = changes
                    continue
            # Each open window's trade count, and the open buckets in it (in time order).
            counts = {window: agg.count for window, agg in level.open.items()}
            members: list[tuple[int, _Agg]] = []
            length, offset, begin = interval.ns, interval.offset_ns, level.begin
            for opened in opened_order:
                window = opened - (opened - offset) % length  # interval.open_time(opened), inlined
                if begin is not None and window < begin:
                    continue
                bucket = buckets[opened]
                members.append((window, bucket))
                counts[window] = counts.get(window, 0) + bucket.count
            sent = self._sent_counts[index]
            emitted = False
            for window in sorted(counts) if len(counts) > 1 else counts:
                if sent.get(window) == counts[window]:
                    continue
                view = level.open.get(window)
                copied = False
                for member_window, bucket in members:
                    if member_window != window:
                        continue
                    if view is None:
                        view = bucket  # read only, unless another bucket is merged into it
                    else:
                        if not copied:
                            view, copied = msgspec.structs.replace(view), True
                        _merge(view, bucket)
                assert view is not None  # every counted window has a folded part or a bucket
                out.append(self._kline(interval, window, view, False))
                emitted = True
            self._sent_counts[index] = counts
            self._sent_changes[index] = changes
            if emitted:
                self._sent_wall[index] = now_wall_ns
        return out

    def _kline(self, interval: Interval, window: int, agg: _Agg, closed: bool) -> Kline:
        volume = agg.volume
        # Positional (a hot path: every emitted kline), in Kline's field order: exchange, symbol, interval,
        # open_time, close_time (interval.close_time(window), inlined), open, high, low, close, volume,
        # quote_volume, trade_count, taker_buy_volume, taker_buy_quote_volume, first_trade_id, last_trade_id, vwap,
        # closed, revision (test_kline_fields_on_a_hand_computed_window fails on a swap).
        return Kline(
            self._s.exchange,
            self._s.symbol,
            interval.name,
            window,
            window + interval.ns - 1,
            agg.open,
            agg.high,
            agg.low,
            agg.close,
            volume,
            agg.quote_volume,
            agg.count,
            agg.buy_volume,
            agg.buy_quote_volume,
            agg.first_id,
            agg.last_id,
            _VWAP.divide(agg.quote_volume, volume) if volume else agg.close,
            closed,
            agg.revision,
        )


_interval_changes_logged: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()


def _with_intervals(state: _State, plan: _Plan) -> _State:
    """The state of an instrument saved under other intervals, for the configured ones: kept intervals keep their
    windows, removed ones are dropped, added ones start at their first window after the watermark (the trades of
    earlier windows are gone: only buckets are kept, and only until they close). Logged once per change."""
    names = _names(plan)
    change = (state.intervals, names)
    if change not in _interval_changes_logged:
        _interval_changes_logged.add(change)
        added = [name for name in names if name not in state.intervals]
        removed = [name for name in state.intervals if name not in names]
        log.warning(
            "kline intervals changed from %s to %s: %s start at their first window after each instrument's "
            "watermark; %s dropped (their klines already sent stay where they are)",
            ",".join(state.intervals),
            ",".join(names),
            ",".join(added) or "none",
            ",".join(removed) or "none",
        )
    # The bucket (the gcd of the intervals) may change size: open buckets move to the bucket of the new size that
    # holds their start, so none closes after a window it belongs to. A finer bucket cannot be split: an old one
    # closes early then, which only folds it into still-open windows of the kept (coarser) intervals.
    buckets: dict[int, _Agg] = {}
    with exact_context():
        for opened in sorted(state.buckets):
            key = window_open(opened, plan.bucket_ns)
            if key in buckets:
                _merge(buckets[key], state.buckets[opened])
            else:
                buckets[key] = state.buckets[opened]
    start = None if state.start is None else window_open(state.start, plan.bucket_ns)
    kept = dict(zip(state.intervals, state.levels, strict=True))
    last_price = _last_price(state)
    levels = []
    for interval in plan.intervals:
        level = kept.get(interval.name)
        if level is None:
            level = _Level()
            if state.start is not None and last_price is not None:
                begin = interval.open_time(state.watermark) + interval.ns
                level = _Level(next_open=begin, closed={begin - interval.ns: _flat(last_price)}, begin=begin)
        levels.append(level)
    return msgspec.structs.replace(state, intervals=names, levels=levels, buckets=buckets, start=start)


def _last_price(state: _State) -> Decimal | None:
    """The price of the instrument's latest trade by ``ts`` still held in ``state`` (or the last carried close)."""
    found: tuple[int, int, Decimal] | None = None
    aggs = [(opened, agg) for opened, agg in state.buckets.items()]
    for level in state.levels:
        aggs += [*level.open.items(), *level.closed.items()]
    for opened, agg in aggs:
        candidate = (agg.last_ts if agg.count else -1, opened, agg.close)
        if found is None or candidate[:2] > found[:2]:
            found = candidate
    return None if found is None else found[2]


def _raise_too_late(trade: Trade, reason: str) -> None:
    raise ValueError(f"{reason}; pass on_too_late to aggregate() to route such trades instead")


def aggregate(
    trades: Iterable[Trade],
    settings: KlineSettings | None = None,
    *,
    on_too_late: Callable[[Trade, str], object] = _raise_too_late,
) -> Iterator[Kline]:
    """Klines of a finite sequence of trades (any instruments, in arrival order): the closed, flat and corrected
    ones as they happen, then those the end of input closes. Per instrument and interval in time order."""
    settings = settings or KlineSettings()
    states: dict[tuple[str, str], InstrumentKlines] = {}
    source = iter(trades)
    # The exact context is entered per chunk and left before yielding: it must not leak into the caller.
    while chunk := list(islice(source, 4096)):
        out: list[Kline] = []
        with exact_context():
            for trade in chunk:
                key = (trade.exchange, trade.symbol)
                state = states.get(key)
                if state is None:
                    state = states[key] = InstrumentKlines.new(trade.exchange, trade.symbol, settings)
                applied = state.apply(trade)
                if applied.too_late:
                    on_too_late(trade, applied.reason or "too late")
                out += applied.klines
        yield from out
    for state in states.values():
        yield from state.flush()
