"""The simulator's own record of what it sent (``simulate --journal PATH``): one line per trade written to a
client socket, per malformed frame injected and per session opened or ended, so a chaos run can prove from the
exchange's side that every trade arrived once.

Format: UTF-8 text, one record per line, fields separated by a tab; the first field is the record kind, the
second the send time in seconds of the system's monotonic clock (``time.monotonic()``, comparable across
processes on the same machine), the third the exchange and the fourth the session id (``{exchange}-{n}``, n
counting the exchange's sessions from 1)::

    O  t  exchange  session                                   a session opened
    T  t  exchange  session  symbol  trade_id  price  qty  side  ts_ns
                                                              a trade written (price, qty: the exact text sent;
                                                              side: the aggressor's; ts_ns: the trade's time)
    M  t  exchange  session  kind                             a malformed frame written (truncated | wrong_types)
    E  t  exchange  session  reason                           a session ended (see SessionEnd)

A trade is journaled when the first frame carrying it is in the transport, per session (the same trade sent to
two sessions gets two lines). Lines are buffered and written in batches (every ``batch_lines`` records and at
least every ``flush_interval_s`` by the simulator), so at most one batch is lost if the simulator is killed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO


class SessionEnd(StrEnum):
    DROPPED = "dropped"  # aborted by the drop fault (no close frame)
    SLOW_CONSUMER = "slow_consumer"  # closed with 1008: its outbox was full
    CLIENT_CLOSED = "client_closed"  # a close handshake (the client or the server closed normally)
    CLIENT_GONE = "client_gone"  # the connection was lost without a close frame (the client died or went away)


@dataclass(frozen=True, slots=True)
class JournalTrade:
    t: float  # float-ok: monotonic seconds
    exchange: str
    session: str
    symbol: str
    trade_id: str
    price: str
    qty: str
    side: str  # buy | sell, the aggressor's
    ts_ns: int  # the trade's time at the exchange, before the dialect renders it (at its precision)


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """A session opened (kind "O", detail ""), ended ("E", detail = a SessionEnd) or a malformed frame ("M")."""

    kind: str
    t: float  # float-ok: monotonic seconds
    exchange: str
    session: str
    detail: str


JournalRecord = JournalTrade | JournalEvent
TradeRow = tuple[str, str, str, str, int]  # trade id, price text, qty text, side, ts_ns


def format_record(record: JournalRecord) -> str:
    if isinstance(record, JournalTrade):
        fields = ["T", f"{record.t:.6f}", record.exchange, record.session, record.symbol, record.trade_id]
        fields += [record.price, record.qty, record.side, str(record.ts_ns)]
    else:
        fields = [record.kind, f"{record.t:.6f}", record.exchange, record.session, record.detail]
    return "\t".join(fields) + "\n"


def parse_record(line: str) -> JournalRecord:
    """One journal line back into its record; ValueError on anything else."""
    fields = line.rstrip("\n").split("\t")
    kind = fields[0]
    if kind == "T" and len(fields) == 10:
        exchange, session, symbol, trade_id, price, qty, side = fields[2:9]
        t = float(fields[1])  # float-ok: monotonic seconds
        return JournalTrade(t, exchange, session, symbol, trade_id, price, qty, side, int(fields[9]))
    if kind in ("O", "M", "E") and len(fields) == 5:
        return JournalEvent(kind, float(fields[1]), fields[2], fields[3], fields[4])  # float-ok: seconds
    raise ValueError(f"not a journal line: {line!r}")


def read_journal(path: Path) -> Iterator[JournalRecord]:
    """The records of a journal file; a last line cut short (the simulator was killed mid-write) is skipped."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.endswith("\n"):
                yield parse_record(line)


class Journal:
    """Appends records to a file in batches. Not thread-safe: the simulator's event loop owns it."""

    def __init__(self, path: Path, batch_lines: int = 4096) -> None:
        self.path = path
        self.batch_lines = batch_lines
        self._file: IO[str] | None = None
        self._pending: list[str] = []

    def open(self) -> None:
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def flush(self) -> None:
        if self._file is not None and self._pending:
            self._file.write("".join(self._pending))
            self._file.flush()
        self._pending.clear()

    def _add(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) >= self.batch_lines:
            self.flush()

    def event(self, kind: str, exchange: str, session: str, detail: str = "") -> None:
        self._add(format_record(JournalEvent(kind, time.monotonic(), exchange, session, detail)))

    def trades(self, exchange: str, session: str, symbol: str, trades: Iterable[TradeRow]) -> None:
        """Trades written now on ``session``: (trade id, price text, qty text, side, ts_ns) each."""
        now = time.monotonic()
        for row in trades:
            self._add(format_record(JournalTrade(now, exchange, session, symbol, *row)))
