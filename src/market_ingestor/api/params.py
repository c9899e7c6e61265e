"""Query parameters and timestamps of the query API: parsing, validation, formatting, pagination cursors.

Times in requests are RFC 3339 with an offset (``2024-03-01T12:00:00Z``, ``2024-03-01T13:00:00.5+01:00``, up to
nanoseconds) or integer milliseconds since the Unix epoch (``1709294400000``). ``from`` is inclusive, ``to``
exclusive. Times in responses come twice: ``<name>`` as RFC 3339 UTC with nine fractional digits and
``<name>_ms`` as integer epoch milliseconds (safe in JavaScript numbers, unlike nanoseconds).

Keyset pagination: a page that may have more rows carries ``next``, an opaque cursor; the same request with
``cursor=<next>`` returns the rows after the last one. Cursors name the endpoint they came from and hold the
sort key of the last row: (time, trade_id) for trades, so trades sharing a timestamp are neither skipped nor
repeated, and open_time for klines and indicators (unique per series).

Every failure raises :class:`RequestError` naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import re
from collections.abc import Iterable
from datetime import date

import msgspec

from market_ingestor.errors import RequestError

SECOND_NS = 1_000_000_000
# PostgreSQL counts timestamps in microseconds from 2000-01-01 (its binary "tuple" codec hands us that integer).
PG_EPOCH_US = 946_684_800_000_000
# Years 1..9999: what RFC 3339 can write; far inside PostgreSQL's timestamptz range.
MIN_NS = -62_135_596_800 * SECOND_NS
MAX_NS = 253_402_300_800 * SECOND_NS

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH_MS = re.compile(r"-?\d{1,16}")
_TIME_HELP = "expected RFC 3339 with an offset (2024-03-01T12:00:00Z) or integer epoch milliseconds"


def parse_time(text: str, parameter: str) -> int:
    """A request time -> ns since the epoch."""
    if _EPOCH_MS.fullmatch(text):
        ns = int(text) * 1_000_000
    else:
        match = _RFC3339.fullmatch(text)
        if match is None:
            raise RequestError(f"malformed time {text!r}: {_TIME_HELP}", parameter)
        year, month, day, hour, minute, second = (int(match.group(n)) for n in range(1, 7))
        try:
            date(year, month, day)
        except ValueError as exc:
            raise RequestError(f"malformed time {text!r}: {exc}", parameter) from None
        if hour > 23 or minute > 59 or second > 60:
            raise RequestError(f"malformed time {text!r}: time of day out of range", parameter)
        offset_s = 0
        if match.group(9):
            offset_h, offset_m = int(match.group(10)), int(match.group(11))
            if offset_h > 23 or offset_m > 59:
                raise RequestError(f"malformed time {text!r}: offset out of range", parameter)
            offset_s = (offset_h * 3600 + offset_m * 60) * (-1 if match.group(9) == "-" else 1)
        seconds = calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0)) - offset_s
        ns = seconds * SECOND_NS + int((match.group(7) or "0").ljust(9, "0"))
    if not MIN_NS <= ns < MAX_NS:
        raise RequestError(f"time {text!r} is outside years 1 to 9999", parameter)
    return ns


class TimeRange(msgspec.Struct, frozen=True):
    start_ns: int = MIN_NS  # inclusive
    end_ns: int = MAX_NS  # exclusive


def time_range(start: str | None, end: str | None) -> TimeRange:
    bounds = TimeRange(
        parse_time(start, "from") if start is not None else MIN_NS,
        parse_time(end, "to") if end is not None else MAX_NS,
    )
    if bounds.end_ns <= bounds.start_ns:
        raise RequestError(f"inverted range: to ({end}) must be later than from ({start})", "to")
    return bounds


def parse_limit(text: str | None, default: int, maximum: int) -> int:
    if text is None:
        return min(default, maximum)
    if not text.isdecimal():
        raise RequestError(f"limit must be a whole number from 1 to {maximum}, got {text!r}", "limit")
    limit = int(text)
    if not 1 <= limit <= maximum:
        raise RequestError(f"limit {limit} is out of range: 1 to {maximum} (the maximum page size)", "limit")
    return limit


def parse_choice(text: str | None, allowed: Iterable[str], parameter: str, what: str) -> str:
    options = list(allowed)
    if text is None:
        raise RequestError(f"{parameter} is required: one of {', '.join(options)}", parameter)
    if text not in options:
        raise RequestError(f"unknown {what} {text!r}: expected one of {', '.join(options)}", parameter)
    return text


# --- PostgreSQL timestamps --------------------------------------------------------------------------------------


def to_pg(ns: int) -> tuple[int]:
    """ns -> PostgreSQL microseconds, truncated as the writer truncates stored times: a bound and a stored time
    are compared at the same (microsecond) precision."""
    return (ns // 1000 - PG_EPOCH_US,)


def from_pg(value: tuple[int]) -> int:
    return (value[0] + PG_EPOCH_US) * 1000


# --- output -----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16_384)
def _second(seconds: int) -> str:
    """``2024-03-01T12:00:00`` for whole seconds since the epoch; cached: a page's rows share few seconds."""
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    return f"{date.fromordinal(_EPOCH_ORDINAL + days).isoformat()}T{hours:02d}:{minutes:02d}:{rest:02d}"


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=32_768)
def iso(ns: int) -> str:
    """``1709294400123456789`` -> ``2024-03-01T12:00:00.123456789Z``. Runs twice per row of a page; cached, as
    the same kline times are asked for again and again."""
    seconds, fraction = divmod(ns, SECOND_NS)
    return f"{_second(seconds)}.{fraction:09d}Z"


def ms(ns: int) -> int:
    return ns // 1_000_000


# --- cursors ----------------------------------------------------------------------------------------------------

_cursor_decoder = msgspec.json.Decoder(tuple[str, int, str])


def encode_cursor(kind: str, pg_us: int, tiebreak: str = "") -> str:
    raw = msgspec.json.encode((kind, pg_us, tiebreak))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


Cursor = tuple[int, str]  # the last row's (PostgreSQL µs, trade id or "")


def decode_cursor(text: str | None, kind: str) -> Cursor | None:
    """The (PostgreSQL µs, tiebreak) after which the page starts; None without a cursor."""
    if text is None:
        return None
    try:
        found, pg_us, tiebreak = _cursor_decoder.decode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise RequestError(f"malformed cursor {text!r}: pass the `next` value of a previous page", "cursor") from None
    if found != kind:
        raise RequestError(f"this cursor belongs to a {found} request, not {kind}", "cursor")
    return pg_us, tiebreak
