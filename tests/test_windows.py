"""Interval parsing and window alignment, as tables: every expected value is written as a UTC calendar time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from market_ingestor.errors import ConfigError
from market_ingestor.windows import (
    DAY_NS,
    HOUR_NS,
    MINUTE_NS,
    SECOND_NS,
    WEEK_NS,
    Interval,
    bucket_ns,
    format_ns,
    parse_interval,
    parse_intervals,
    window_close,
    window_open,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(text: str, extra_ns: int = 0) -> int:
    """``"2024-02-29 12:34:56"`` -> ns since the epoch, in integers only."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(seconds=1) * SECOND_NS + extra_ns


LAST_NS = SECOND_NS - 1  # the last nanosecond of a second


@pytest.mark.parametrize(
    ("interval", "ts", "expected_open"),
    [
        # a leap day, mid-window, for each default interval
        ("1m", utc("2024-02-29 12:34:56", 789), utc("2024-02-29 12:34:00")),
        ("5m", utc("2024-02-29 12:34:56"), utc("2024-02-29 12:30:00")),
        ("15m", utc("2024-02-29 12:34:56"), utc("2024-02-29 12:30:00")),
        ("1h", utc("2024-02-29 12:34:56"), utc("2024-02-29 12:00:00")),
        ("4h", utc("2024-02-29 12:34:56"), utc("2024-02-29 12:00:00")),
        ("1d", utc("2024-02-29 12:34:56"), utc("2024-02-29 00:00:00")),
        ("1w", utc("2024-02-29 12:34:56"), utc("2024-02-26 00:00:00")),  # Thursday -> Monday
        # exact boundaries and the nanosecond before them
        ("1m", utc("2024-02-29 12:35:00"), utc("2024-02-29 12:35:00")),
        ("1m", utc("2024-02-29 12:34:59", LAST_NS), utc("2024-02-29 12:34:00")),
        ("4h", utc("2024-02-29 03:59:59", LAST_NS), utc("2024-02-29 00:00:00")),
        ("4h", utc("2024-02-29 04:00:00"), utc("2024-02-29 04:00:00")),
        ("4h", utc("2024-02-29 23:59:59", LAST_NS), utc("2024-02-29 20:00:00")),
        ("1d", utc("2024-02-29 23:59:59", LAST_NS), utc("2024-02-29 00:00:00")),
        ("1d", utc("2024-03-01 00:00:00"), utc("2024-03-01 00:00:00")),
        ("1d", utc("2023-03-01 00:00:00", -1), utc("2023-02-28 00:00:00")),  # no leap day in 2023
        ("1w", utc("2024-03-03 23:59:59", LAST_NS), utc("2024-02-26 00:00:00")),  # Sunday night
        ("1w", utc("2024-03-04 00:00:00"), utc("2024-03-04 00:00:00")),  # Monday
        ("1w", utc("2024-12-31 23:59:59"), utc("2024-12-30 00:00:00")),  # a week across the year end
        ("1w", utc("1970-01-05 00:00:00"), utc("1970-01-05 00:00:00")),  # the first Monday after the epoch
        ("2w", utc("1970-01-19 00:00:00", -1), utc("1970-01-05 00:00:00")),
        ("30s", utc("2024-02-29 12:34:45"), utc("2024-02-29 12:34:30")),
        ("2h", utc("2024-02-29 01:00:00"), utc("2024-02-29 00:00:00")),
        ("3d", utc("1970-01-04 00:00:00"), utc("1970-01-04 00:00:00")),  # epoch-aligned, unlike weeks
        # zero and before the epoch
        ("1m", 0, 0),
        ("1d", 0, 0),
        ("1w", 0, utc("1969-12-29 00:00:00")),  # the epoch was a Thursday
        ("1m", -1, -MINUTE_NS),
        ("1d", -1, -DAY_NS),
        ("1w", -1, utc("1969-12-29 00:00:00")),
        ("1h", utc("1969-07-20 20:17:40"), utc("1969-07-20 20:00:00")),
    ],
)
def test_window_open_is_aligned_to_utc(interval: str, ts: int, expected_open: int) -> None:
    parsed = parse_interval(interval)
    assert parsed.open_time(ts) == expected_open
    assert window_open(ts, parsed.ns, parsed.offset_ns) == expected_open
    assert parsed.close_time(expected_open) == expected_open + parsed.ns - 1 >= ts


@pytest.mark.parametrize(
    ("open_time", "length", "expected_close"),
    [
        (utc("2024-02-29 12:34:00"), MINUTE_NS, utc("2024-02-29 12:34:59", LAST_NS)),
        (utc("2024-02-28 00:00:00"), DAY_NS, utc("2024-02-28 23:59:59", LAST_NS)),  # not the 29th's midnight
        (utc("2024-02-29 20:00:00"), 4 * HOUR_NS, utc("2024-02-29 23:59:59", LAST_NS)),
        (utc("2024-02-26 00:00:00"), WEEK_NS, utc("2024-03-03 23:59:59", LAST_NS)),
        (-MINUTE_NS, MINUTE_NS, -1),
    ],
)
def test_window_close_is_the_last_nanosecond(open_time: int, length: int, expected_close: int) -> None:
    assert window_close(open_time, length) == expected_close


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", Interval("30s", 30 * SECOND_NS)),
        ("1m", Interval("1m", MINUTE_NS)),
        ("90m", Interval("90m", 90 * MINUTE_NS)),
        ("4h", Interval("4h", 4 * HOUR_NS)),
        ("1d", Interval("1d", DAY_NS)),
        ("1w", Interval("1w", WEEK_NS, 4 * DAY_NS)),
        ("2w", Interval("2w", 2 * WEEK_NS, 4 * DAY_NS)),
    ],
)
def test_parse_interval(text: str, expected: Interval) -> None:
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["", "m", "0m", "00m", "01m", "-1m", "1.5h", "1 m", " 1m", "1mm", "1y", "1H", "1M"])
def test_a_bad_interval_is_rejected_with_the_expected_form(text: str) -> None:
    with pytest.raises(ConfigError, match="expected a positive whole number followed by s, m, h, d or w"):
        parse_interval(text)


def test_months_are_rejected_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="months are not supported"):
        parse_interval("1M")


def test_intervals_come_out_shortest_first_and_duplicates_are_rejected() -> None:
    assert [i.name for i in parse_intervals(["1d", "1m", "4h", "1w", "5m"])] == ["1m", "5m", "4h", "1d", "1w"]
    with pytest.raises(ConfigError, match="'60m' and '1h' are the same window"):
        parse_intervals(["60m", "1h"])
    with pytest.raises(ConfigError, match="no kline interval"):
        parse_intervals([])
    # the same length with another alignment is another window
    assert len(parse_intervals(["7d", "1w"])) == 2


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        (["1m", "5m", "15m", "1h", "4h", "1d"], MINUTE_NS),
        (["1m", "5m", "15m", "1h", "4h", "1d", "1w"], MINUTE_NS),
        (["2m", "3m"], MINUTE_NS),  # a bucket that is no configured interval
        (["30s", "1m"], 30 * SECOND_NS),
        (["1h", "1d"], HOUR_NS),
        (["1w"], DAY_NS),  # weeks start four days after the epoch
        (["2w"], 2 * DAY_NS),
    ],
)
def test_bucket_tiles_every_window(intervals: list[str], expected: int) -> None:
    parsed = parse_intervals(intervals)
    assert bucket_ns(parsed) == expected
    for interval in parsed:  # every window boundary is a bucket boundary
        assert interval.ns % expected == 0 and interval.offset_ns % expected == 0


def test_format_ns() -> None:
    assert format_ns(utc("2024-02-29 12:34:56", 7)) == "2024-02-29T12:34:56.000000007Z"
    assert format_ns(-1) == "1969-12-31T23:59:59.999999999Z"
