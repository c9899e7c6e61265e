"""Kline intervals and tumbling-window arithmetic, in integer nanoseconds since the Unix epoch (UTC).

An interval is written as a positive whole number and a unit: ``s``, ``m``, ``h``, ``d`` or ``w`` ("30s", "1m",
"4h", "1d", "1w"). Windows are tumbling and aligned to UTC:

    open_time  = ts - (ts - offset) % length   window_open,  Interval.open_time
    close_time = open_time + length - 1        window_close, Interval.close_time (the last nanosecond, as
                                               exchanges state it)
    closed once watermark > open_time + length - 1 + grace        closes_after_ns (the stream's closing rule)

``offset`` is 0 for every unit except weeks: the epoch (1970-01-01) was a Thursday, and weeks start on Monday
00:00 UTC as Binance's ``1w`` klines do, so week windows are shifted by four days (1970-01-05 was a Monday).
Hence 1d windows start at UTC midnight, 4h windows at 00/04/08/12/16/20 UTC, and "7d" (epoch-aligned, starting on
Thursdays) differs from "1w" (Monday). Calendar months are not supported: they have no fixed length.

Timestamps before the epoch work too (Python's ``%`` is a floor modulo, so ``open_time <= ts`` always holds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import msgspec

from market_ingestor.errors import ConfigError

SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS
WEEK_NS = 7 * DAY_NS
# 1970-01-01 was a Thursday; the first Monday 00:00 UTC is four days later.
WEEK_OFFSET_NS = 4 * DAY_NS

UNIT_NS: dict[str, int] = {"s": SECOND_NS, "m": MINUTE_NS, "h": HOUR_NS, "d": DAY_NS, "w": WEEK_NS}
_INTERVAL = re.compile(r"([1-9][0-9]{0,8})([smhdw])")
_EXPECTED = "a positive whole number followed by s, m, h, d or w (e.g. 30s, 1m, 4h, 1d, 1w)"


def window_open(ts: int, length_ns: int, offset_ns: int = 0) -> int:
    """Start (inclusive) of the window of ``length_ns`` holding ``ts``; windows start at ``offset_ns + k*length``."""
    return ts - (ts - offset_ns) % length_ns


def window_close(open_time: int, length_ns: int) -> int:
    """The window's last nanosecond (exchange style: inclusive)."""
    return open_time + closes_after_ns(length_ns)


def closes_after_ns(length_ns: int, wait_ns: int = 0) -> int:
    """How far past its open time the watermark must go before a window of ``length_ns`` closes, waiting
    ``wait_ns`` beyond its last nanosecond: a window opened at ``t`` closes once ``watermark > t +
    closes_after_ns(length, grace)``. The kline state machine keeps these offsets per interval (computed once)."""
    return length_ns - 1 + wait_ns


class Interval(msgspec.Struct, frozen=True):
    """A parsed interval: its name as configured ("4h"), its length and its alignment offset in ns."""

    name: str
    ns: int
    offset_ns: int = 0

    def open_time(self, ts: int) -> int:
        """:func:`window_open` of this interval (written out: the kline state machine calls it per trade)."""
        return ts - (ts - self.offset_ns) % self.ns

    def close_time(self, open_time: int) -> int:
        return window_close(open_time, self.ns)

    def closes_after_ns(self, wait_ns: int = 0) -> int:
        return closes_after_ns(self.ns, wait_ns)


def parse_interval(text: str) -> Interval:
    """``"4h"`` -> ``Interval("4h", 4 * HOUR_NS)``; anything else than :data:`_EXPECTED` raises ConfigError."""
    match = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        hint = " (months are not supported: they have no fixed length)" if str(text).endswith("M") else ""
        raise ConfigError(f"invalid kline interval {text!r}: expected {_EXPECTED}{hint}")
    count, unit = int(match.group(1)), match.group(2)
    length = count * UNIT_NS[unit]
    return Interval(text, length, WEEK_OFFSET_NS % length if unit == "w" else 0)


def parse_intervals(texts: Iterable[str]) -> tuple[Interval, ...]:
    """Several intervals, shortest first; two names for the same window ("60m" and "1h") are an error."""
    intervals = [parse_interval(text) for text in texts]
    if not intervals:
        raise ConfigError("no kline interval configured: give at least one, e.g. 1m")
    seen: dict[tuple[int, int], str] = {}
    for interval in intervals:
        key = (interval.ns, interval.offset_ns)
        if key in seen:
            raise ConfigError(f"kline intervals {seen[key]!r} and {interval.name!r} are the same window")
        seen[key] = interval.name
    return tuple(sorted(intervals, key=lambda i: (i.ns, i.offset_ns)))


def bucket_ns(intervals: Iterable[Interval]) -> int:
    """The longest epoch-aligned bucket that tiles every interval's windows exactly (gcd of lengths and offsets).

    For the default 1m..1d plus 1w this is one minute: each window of every interval is a whole number of
    buckets, so a trade only has to be added to its bucket and longer windows are built from closed buckets.
    """
    return math.gcd(*(value for interval in intervals for value in (interval.ns, interval.offset_ns)))


def format_ns(ts: int) -> str:
    """``1709210096000000000`` -> ``2024-02-29T12:34:56.000000000Z``, for messages to operators."""
    seconds, ns = divmod(ts, SECOND_NS)
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ns:09d}Z"
