"""The chaos run's accounting, pure: the simulator's journal of what it sent against what was stored.

A trade is *owed* when at least one session it was written on did not die (dropped, the client gone, closed as
a slow consumer) within ``in_flight_s`` after writing it: it must be stored exactly once, with the exact price
and qty text. A trade written only on sessions that died right after is *in flight at a fault*: the exchange
protocol cannot replay it, so it is counted apart (stored or not), never silently.

So is a trade the client had provably not read when the exchange aborted its session (dropped, or closed as a
slow consumer: the reset throws away what the client's socket still held): one written after the last trade of
that session that was stored. A session is one ordered stream, so everything written before a stored trade was
read; a client held back by backpressure (the broker away) reads seconds behind, beyond ``in_flight_s``. A
session that ended because the client died keeps the ``in_flight_s`` rule alone: what a client read and then
lost is a loss.

Klines against the simulator's truth: the pure aggregation of the trades the simulator sent (its side and time)
that the pipeline owed or stored anyway, compared with every closed stored kline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from market_ingestor.model import Side, Trade
from market_ingestor.simulator.journal import JournalEvent, JournalRecord, JournalTrade, SessionEnd
from market_ingestor.streams.klines import KlineSettings, aggregate

TradeKey = tuple[str, str, str]  # exchange, symbol, trade id
Values = tuple[str, str]  # price, qty as text

_FAULT_ENDS = {SessionEnd.DROPPED, SessionEnd.CLIENT_GONE, SessionEnd.SLOW_CONSUMER}
_ABORTED_BY_EXCHANGE = {SessionEnd.DROPPED, SessionEnd.SLOW_CONSUMER}


@dataclass(frozen=True, slots=True)
class StoredTrade:
    exchange: str
    symbol: str
    trade_id: str
    price: str
    qty: str


@dataclass(slots=True)
class TradeAccount:
    sent: int = 0  # distinct trades written to some session
    owed: int = 0  # of which must be stored
    stored: int = 0  # rows in market_trades
    duplicated: int = 0  # rows beyond the first of a trade
    in_flight: int = 0  # sent only on sessions that died right after (or before the client read it)
    in_flight_stored: int = 0
    unread: int = 0  # of the in flight, those not yet read by the client when the exchange aborted its session
    lost: list[TradeKey] = field(default_factory=list)  # owed, not stored
    never_sent: list[TradeKey] = field(default_factory=list)  # stored, never journaled
    changed: list[TradeKey] = field(default_factory=list)  # stored with another price or qty text than sent

    @property
    def ok(self) -> bool:
        return not (self.lost or self.never_sent or self.changed or self.duplicated)


def session_ends(records: Iterable[JournalRecord]) -> dict[str, tuple[float, str]]:
    """Session id -> (end time, reason) of the sessions that ended."""
    return {r.session: (r.t, r.detail) for r in records if isinstance(r, JournalEvent) and r.kind == "E"}


class Sessions:
    """How each session ended and how far its client provably read it (the last of its trades that was stored)."""

    def __init__(self, records: list[JournalRecord], stored: set[TradeKey], in_flight_s: float) -> None:
        self.ends = session_ends(records)
        self.in_flight_s = in_flight_s
        self.read_until: dict[str, float] = {}
        for r in records:
            if isinstance(r, JournalTrade) and (r.exchange, r.symbol, r.trade_id) in stored:
                self.read_until[r.session] = max(r.t, self.read_until.get(r.session, r.t))

    def unread(self, r: JournalTrade | JournalEvent) -> bool:
        """Written after what the client read of a session the exchange aborted."""
        end = self.ends.get(r.session)
        return end is not None and end[1] in _ABORTED_BY_EXCHANGE and r.t > self.read_until.get(r.session, -1.0)

    def in_flight(self, r: JournalTrade | JournalEvent) -> bool:
        """Written within ``in_flight_s`` before a fault ended the session, or unread when the exchange aborted it."""
        end = self.ends.get(r.session)
        return end is not None and end[1] in _FAULT_ENDS and (end[0] - r.t <= self.in_flight_s or self.unread(r))


def account_trades(records: Iterable[JournalRecord], stored: Iterable[StoredTrade], in_flight_s: float) -> TradeAccount:
    records = list(records)
    rows = list(stored)
    counts = Counter((s.exchange, s.symbol, s.trade_id) for s in rows)
    sessions = Sessions(records, set(counts), in_flight_s)
    sent: dict[TradeKey, Values] = {}
    owed: set[TradeKey] = set()
    unread: set[TradeKey] = set()
    for r in records:
        if isinstance(r, JournalTrade):
            key = (r.exchange, r.symbol, r.trade_id)
            sent.setdefault(key, (r.price, r.qty))
            if not sessions.in_flight(r):
                owed.add(key)
            elif sessions.unread(r):
                unread.add(key)
    account = TradeAccount(sent=len(sent), owed=len(owed), stored=len(rows))
    account.duplicated = sum(n - 1 for n in counts.values())
    for s in rows:
        key = (s.exchange, s.symbol, s.trade_id)
        values = sent.get(key)
        if values is None:
            account.never_sent.append(key)
        elif values != (s.price, s.qty):
            account.changed.append(key)
    account.lost = sorted(key for key in owed if key not in counts)
    flying = [key for key in sent if key not in owed]
    account.in_flight = len(flying)
    account.in_flight_stored = sum(1 for key in flying if key in counts)
    account.unread = sum(1 for key in flying if key in unread)
    return account


def expected_dead_letters(
    records: Iterable[JournalRecord], stored: set[TradeKey], in_flight_s: float
) -> tuple[int, int]:
    """(malformed frames owed as dead letters, those in flight at a fault: as for trades)."""
    records = list(records)
    sessions = Sessions(records, stored, in_flight_s)
    owed = flying = 0
    for r in records:
        if isinstance(r, JournalEvent) and r.kind == "M":
            if sessions.in_flight(r):
                flying += 1
            else:
                owed += 1
    return owed, flying


def reconnected_s(records: Iterable[JournalRecord], after: float, exchanges: Iterable[str]) -> float | None:
    """Seconds from ``after`` until every exchange had a session opened again (None if one never did)."""
    wanted, latest = set(exchanges), after
    for r in records:
        if isinstance(r, JournalEvent) and r.kind == "O" and r.t >= after and r.exchange in wanted:
            wanted.discard(r.exchange)
            latest = max(latest, r.t)
    return None if wanted else latest - after


KlineKey = tuple[str, str, str, int]  # exchange, symbol, interval, open_time (ns)
# What a kline says about its trades; revision (how it got there) and close_time (stored at µs) are left out.
KLINE_FIELDS = (
    "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "taker_buy_volume",
    "taker_buy_quote_volume", "first_trade_id", "last_trade_id", "vwap",
)  # fmt: skip
KlineValues = tuple[object, ...]  # KLINE_FIELDS in order: Decimals, an int, the trade ids


@dataclass(slots=True)
class KlineAccount:
    checked: int = 0  # closed stored klines compared with the simulator's truth
    wrong: list[tuple[KlineKey, KlineValues, KlineValues | None]] = field(default_factory=list)  # stored, truth
    missing: list[KlineKey] = field(default_factory=list)  # a truth window not stored closed

    @property
    def ok(self) -> bool:
        return not (self.wrong or self.missing)


def delivered_trades(records: Iterable[JournalRecord], stored: set[TradeKey], in_flight_s: float) -> list[Trade]:
    """The trades the pipeline owes plus those in flight at a fault that it stored anyway, as the simulator sent
    them (its side and time), in (time, trade id) order per instrument: the input of the truth's klines."""
    records = list(records)
    sessions = Sessions(records, stored, in_flight_s)
    chosen: dict[TradeKey, JournalTrade] = {}
    for r in records:
        if isinstance(r, JournalTrade):
            key = (r.exchange, r.symbol, r.trade_id)
            if key not in chosen and (key in stored or not sessions.in_flight(r)):
                chosen[key] = r
    trades = [
        Trade(t.exchange, t.symbol, t.trade_id, Decimal(t.price), Decimal(t.qty), _side(t.side), t.ts_ns, t.ts_ns)
        for t in chosen.values()
    ]
    # The stream breaks ties of time by arrival, which is trade-id order (numeric ids: shorter first).
    return sorted(trades, key=lambda t: (t.exchange, t.symbol, t.ts, len(t.trade_id), t.trade_id))


def _side(side: str) -> Side:
    if side not in ("buy", "sell"):
        raise ValueError(f"journal: side {side!r}")
    return "buy" if side == "buy" else "sell"


def truth_klines(trades: Iterable[Trade], intervals: Iterable[str]) -> dict[KlineKey, KlineValues]:
    """The closed klines of ``trades`` by the pure aggregation, at their last revision."""
    klines: dict[KlineKey, KlineValues] = {}
    for k in aggregate(trades, KlineSettings(intervals=tuple(intervals))):
        if k.closed:
            klines[(k.exchange, k.symbol, k.interval, k.open_time)] = tuple(getattr(k, f) for f in KLINE_FIELDS)
    return klines


def compare_klines(truth: dict[KlineKey, KlineValues], stored: dict[KlineKey, KlineValues]) -> KlineAccount:
    """Every closed stored kline against the truth, and every truth window stored (closed: the run waits until the
    worker has closed the last windows by the wall clock)."""
    account = KlineAccount(checked=len(stored))
    for key, values in sorted(stored.items()):
        if truth.get(key) != values:
            account.wrong.append((key, values, truth.get(key)))
    account.missing = sorted(key for key in truth if key not in stored)
    return account


def repeated_outputs(events: Iterable[dict[str, object]]) -> list[tuple[object, ...]]:
    """The closed klines and indicator values (decoded events of ``market.klines`` / ``market.indicators``, as a
    ``read_committed`` reader gets them) published more than once with the same revision: under exactly once
    there are none (a crash between an output and the commit of its input would repeat it)."""
    seen: Counter[tuple[object, ...]] = Counter()
    for e in events:
        instrument = (e.get("exchange"), e.get("symbol"), e.get("interval"))
        if e.get("type") == "kline" and e.get("closed"):
            seen[("kline", *instrument, e["open_time"], e["revision"])] += 1
        elif e.get("type") == "indicator":
            seen[("indicator", *instrument, e["name"], e["open_time"], e["revision"])] += 1
    return sorted((key for key, count in seen.items() if count > 1), key=repr)
