"""Pure parts of the query API: request times, limits, cursors and the formatting of response times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_ingestor.api.params import (
    MAX_NS,
    MIN_NS,
    decode_cursor,
    encode_cursor,
    from_pg,
    iso,
    parse_limit,
    parse_time,
    time_range,
    to_pg,
)
from market_ingestor.errors import RequestError

NOON = 1_709_294_400_000_000_000  # 2024-03-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1709294400000", NOON),
        ("0", 0),
        ("-1", -1_000_000),
        ("2024-03-01T12:00:00Z", NOON),
        ("2024-03-01t12:00:00z", NOON),
        ("2024-03-01 12:00:00Z", NOON),
        ("2024-03-01T13:30:00+01:30", NOON),
        ("2024-03-01T07:00:00-05:00", NOON),
        ("2024-03-01T12:00:00.5Z", NOON + 500_000_000),
        ("2024-03-01T12:00:00.123456789Z", NOON + 123_456_789),
        ("2024-02-29T00:00:00Z", NOON - 36 * 3600 * 10**9),
        ("0001-01-01T00:00:00Z", MIN_NS),
    ],
)
def test_request_times(text, ns):
    assert parse_time(text, "from") == ns


@pytest.mark.parametrize(
    "text",
    [
        "", "now", "2024-03-01", "2024-03-01T12:00:00", "2024-03-01T12:00Z", "2024-02-30T00:00:00Z",
        "2024-03-01T24:00:00Z", "2024-03-01T12:00:00.1234567890Z", "2024-03-01T12:00:00+24:00", "1.5",
        "99999999999999999", "253402300800000",
    ],
)  # fmt: skip
def test_malformed_times_name_the_parameter(text):
    with pytest.raises(RequestError) as caught:
        parse_time(text, "to")
    assert caught.value.parameter == "to" and caught.value.status == 400


def test_ranges_and_limits():
    assert time_range(None, None).start_ns == MIN_NS and time_range(None, None).end_ns == MAX_NS
    with pytest.raises(RequestError, match="inverted range") as caught:
        time_range("2024-03-02T00:00:00Z", "2024-03-01T00:00:00Z")
    assert caught.value.parameter == "to"
    assert parse_limit(None, 500, 100) == 100 and parse_limit("7", 500, 100) == 7
    for bad in ("0", "101", "-1", "1e2", "", " 5"):
        with pytest.raises(RequestError) as caught:
            parse_limit(bad, 500, 100)
        assert caught.value.parameter == "limit"


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS - 1))
def test_iso_round_trips_through_parse_time(ns):
    assert parse_time(iso(ns), "from") == ns


def test_iso_examples():
    assert iso(NOON + 123_456_789) == "2024-03-01T12:00:00.123456789Z"
    assert iso(-1) == "1969-12-31T23:59:59.999999999Z"
    assert iso(MIN_NS) == "0001-01-01T00:00:00.000000000Z"


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS - 1))
def test_database_bounds_truncate_to_the_microsecond_as_stored_times_do(ns):
    assert from_pg(to_pg(ns)) == ns - ns % 1000


@given(st.integers(min_value=-(2**62), max_value=2**62), st.text())
def test_cursors_round_trip_and_know_their_endpoint(pg_us, tiebreak):
    cursor = encode_cursor("trades", pg_us, tiebreak)
    assert decode_cursor(cursor, "trades") == (pg_us, tiebreak)
    with pytest.raises(RequestError, match="belongs to a trades request"):
        decode_cursor(cursor, "klines")


@pytest.mark.parametrize("text", ["", "%%%", "bm9wZQ", encode_cursor("x", 1)[:-3]])
def test_malformed_cursors(text):
    with pytest.raises(RequestError) as caught:
        decode_cursor(text, "klines")
    assert caught.value.parameter == "cursor"
