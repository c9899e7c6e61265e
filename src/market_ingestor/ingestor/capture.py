"""Recorded sessions: the line format of ``../shared/exchange-samples`` (and of our own capture files), read and
written in one place.

    <url> <-> <ts>              a WebSocket connection was opened
    <url> <- <ts>: <json>       a frame the client sent (subscriptions)
    <ts>: <json>                a frame received from the exchange
    <url> -> <ts>: <json>       a REST response
    configuration: <json>       what the recorder was asked to subscribe

``<ts>`` is the recorder's clock in seconds (float). Plain JSON lines (one raw received frame per line, no
timestamp) are read too. Files are read as bytes and decoded line by line: a line that is not UTF-8 becomes an
``unreadable`` record carrying the reason, and the lines after it are read as usual.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Literal

RecordKind = Literal["open", "sent", "received", "rest", "configuration", "unreadable"]

_OPEN = re.compile(r"^(\S+) <-> (\d+(?:\.\d+)?)$")
_SENT = re.compile(r"^(\S+) <- (\d+(?:\.\d+)?): (.*)$")
_REST = re.compile(r"^(\S+) -> (\d+(?:\.\d+)?): (.*)$")
_RECEIVED = re.compile(r"^(\d+(?:\.\d+)?): (.*)$")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    kind: RecordKind
    payload: str  # the frame or body as recorded; "" for "open"; the reason for "unreadable"
    ts: float | None  # recorder clock, seconds; None for plain JSON lines
    url: str | None = None
    line_no: int = 0

    ts_text: str = ""  # the timestamp as recorded, for an exact conversion

    @property
    def recv_ts_ns(self) -> int:
        """The recorder's timestamp in integer nanoseconds, from its digits (no float rounding)."""
        return int(Decimal(self.ts_text or "0").scaleb(9).to_integral_value()) if self.ts_text else 0


def _clock(text: str) -> float:  # float-ok: pacing clock, see SessionRecord.ts_text for exact times
    return float(text)  # float-ok


def parse_line(line: str, line_no: int = 0) -> SessionRecord | None:
    """One line -> a record; None for blank lines. Unrecognized lines are taken as plain received frames."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.startswith("configuration: "):
        return SessionRecord("configuration", line[len("configuration: ") :], None, None, line_no)
    # ``ts`` as float is the recorder's clock for pacing a replay; exact times come from ``ts_text``.
    if match := _RECEIVED.match(line):
        return SessionRecord("received", match.group(2), _clock(match.group(1)), None, line_no, match.group(1))
    if match := _SENT.match(line):
        return SessionRecord("sent", match.group(3), _clock(match.group(2)), match.group(1), line_no, match.group(2))
    if match := _REST.match(line):
        return SessionRecord("rest", match.group(3), _clock(match.group(2)), match.group(1), line_no, match.group(2))
    if match := _OPEN.match(line):
        return SessionRecord("open", "", _clock(match.group(2)), match.group(1), line_no, match.group(2))
    return SessionRecord("received", line, None, None, line_no)


def _unreadable(exc: UnicodeDecodeError, line_no: int) -> SessionRecord:
    """A line that is not UTF-8, as a record saying where its first bad byte is."""
    bad = exc.object[exc.start : exc.end]
    reason = f"not UTF-8 ({exc.reason}: {bad!r} at byte {exc.start + 1} of the line)"
    return SessionRecord("unreadable", reason, None, None, line_no)


Source = str | Path | Iterable[str | bytes]


def read_session(source: Source) -> Iterator[SessionRecord]:
    """The records of a file (by path) or of lines (text, or bytes as from ``sys.stdin.buffer``)."""
    if isinstance(source, str | Path):
        with Path(source).open("rb") as handle:
            yield from read_session(handle)
        return
    line: str
    for line_no, raw in enumerate(source, 1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _unreadable(exc, line_no)
                continue
        else:
            line = raw
        record = parse_line(line, line_no)
        if record is not None:
            yield record


def received_frames(source: Source) -> Iterator[SessionRecord]:
    return (record for record in read_session(source) if record.kind == "received")


def rest_bodies(source: Source) -> Iterator[SessionRecord]:
    return (record for record in read_session(source) if record.kind == "rest")


def format_received(payload: str, ts_s: float) -> str:
    return f"{ts_s:.6f}: {payload}\n"


def ns_text(ts_ns: int) -> str:
    """Integer nanoseconds as the recorder's seconds text, exactly (``1700000000.063356900``)."""
    return f"{ts_ns // 1_000_000_000}.{ts_ns % 1_000_000_000:09d}"


class CaptureWriter:
    """Appends raw frames to a capture file in the recorded-session format, so any incident can be replayed.

    Writes go through a buffered file (the OS absorbs bursts); ``close`` flushes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = self.path.open("a", encoding="utf-8", buffering=1 << 20)
        self._opened: set[str] = set()

    def write(self, url: str, frame: str | bytes, recv_ts: int) -> None:
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "backslashreplace")
        if url not in self._opened:
            self._opened.add(url)
            self._handle.write(f"{url} <-> {ns_text(recv_ts)}\n")
        # A frame is one line in this format; a raw newline inside one (legal JSON whitespace) is escaped.
        self._handle.write(f"{ns_text(recv_ts)}: {text.replace(chr(10), ' ')}\n")

    def close(self) -> None:
        self._handle.close()


def format_open(url: str, ts_s: float) -> str:
    return f"{url} <-> {ts_s:.6f}\n"


def format_sent(url: str, payload: str, ts_s: float) -> str:
    return f"{url} <- {ts_s:.6f}: {payload}\n"


def write_record(handle: IO[str], record: SessionRecord) -> None:
    """Writes a record back in the recorded-session format (what ``read_session`` reads)."""
    ts = record.ts or 0.0
    if record.kind == "received":
        handle.write(format_received(record.payload, ts))
    elif record.kind == "sent":
        handle.write(format_sent(record.url or "", record.payload, ts))
    elif record.kind == "open":
        handle.write(format_open(record.url or "", ts))
    elif record.kind == "rest":
        handle.write(f"{record.url} -> {ts:.6f}: {record.payload}\n")
    else:
        handle.write(f"configuration: {record.payload}\n")
