"""The helpers every exchange parser shares (``exchanges/wire.py``), and the promise they let every parser keep:
whatever a frame holds, ``parse`` returns events or raises ParseError, never anything else."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_ingestor.errors import ParseError, SymbolError
from market_ingestor.ingestor.exchanges import REGISTRY, get_spec
from market_ingestor.ingestor.exchanges.base import ExchangeSpec, ParseContext
from market_ingestor.ingestor.exchanges.bybit import spec_for
from market_ingestor.ingestor.exchanges.wire import (
    CACHE_LIMIT,
    DECODE_ERRORS,
    MAX_ADJUSTED_EXPONENT,
    MIN_ADJUSTED_EXPONENT,
    EpochMs,
    SymbolCache,
    ascii_digits,
    batches,
    check_trade,
    decode,
    delimited_name,
    level_ok,
    levels_ok,
    listed_instrument,
    listed_or,
    non_negative,
    plain_name,
    plain_native_symbol,
    positive,
    quote_ok,
    utc_time_parser,
)
from market_ingestor.instruments import Instrument, InstrumentRegistry

# --- numbers ------------------------------------------------------------------------------------------------


def in_range(value: Decimal) -> bool:
    return MIN_ADJUSTED_EXPONENT <= value.adjusted() <= MAX_ADJUSTED_EXPONENT


def reference_positive(value: Decimal) -> bool:
    return value.is_finite() and value > 0 and in_range(value)


def reference_non_negative(value: Decimal) -> bool:
    return value.is_finite() and value >= 0 and in_range(value)


SPECIAL_DECIMALS = [
    Decimal(text)
    for text in (
        "NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "0", "-0", "0E-30", "0E-31", "0E+30", "0E+31", "-0E-31",
        "1E-30", "9.99E-31", "1E31", "9.999E30", "99999999999999999999999999999.99", "-1E-30", "-1", "1E-999999999",
    )
]  # fmt: skip
finite_decimals = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=14),
    st.integers(-50, 50),
)
decimals = finite_decimals | st.sampled_from(SPECIAL_DECIMALS) | st.decimals(allow_nan=True, allow_infinity=True)


@settings(max_examples=500)
@given(decimals)
def test_positive_and_non_negative_bound_sign_finiteness_and_magnitude(value: Decimal) -> None:
    assert positive(value) is reference_positive(value)
    assert non_negative(value) is reference_non_negative(value)


@pytest.mark.parametrize("value", SPECIAL_DECIMALS)
def test_the_edges_of_the_magnitude_range(value: Decimal) -> None:
    assert positive(value) is reference_positive(value)
    assert non_negative(value) is reference_non_negative(value)


@settings(max_examples=300)
@given(decimals, decimals)
def test_a_trade_needs_a_positive_price_and_quantity(price: Decimal, qty: Decimal) -> None:
    if reference_positive(price) and reference_positive(qty):
        check_trade("x trade", price, qty)
    else:
        with pytest.raises(
            ParseError, match=r"^x trade: (price|quantity) .* is not a positive number of a market's magnitude$"
        ):
            check_trade("x trade", price, qty)


@settings(max_examples=300)
@given(decimals, decimals, decimals, decimals)
def test_a_quote_needs_four_non_negative_numbers(a: Decimal, b: Decimal, c: Decimal, d: Decimal) -> None:
    assert quote_ok(a, b, c, d) is all(reference_non_negative(value) for value in (a, b, c, d))


@settings(max_examples=300)
@given(st.lists(st.tuples(decimals, decimals), max_size=4))
def test_a_level_needs_a_positive_price_and_a_non_negative_quantity(levels: list[tuple[Decimal, Decimal]]) -> None:
    expected = [reference_positive(price) and reference_non_negative(qty) for price, qty in levels]
    assert [level_ok(price, qty) for price, qty in levels] == expected
    assert levels_ok(levels) is all(expected)
    assert levels_ok(tuple(levels)) is all(expected)


def test_a_removed_level_is_a_zero_quantity() -> None:
    assert level_ok(Decimal("358.2"), Decimal("0E-8"))
    assert not level_ok(Decimal("0"), Decimal("1"))
    assert not level_ok(Decimal("1"), Decimal("0E-999999"))
    assert levels_ok([])


# --- decoding -----------------------------------------------------------------------------------------------


def test_decode_turns_every_refusal_into_a_parse_error_naming_the_body() -> None:
    decoder = msgspec.json.Decoder(dict[str, int])
    assert decode(decoder, b'{"a":1}', "x listing") == {"a": 1}
    assert decode(decoder, '{"a":1}', "x listing") == {"a": 1}
    for body in (b"", b"[", b'{"a":"b"}', b"[" * 100_000, b'{"a":' * 100_000, b'{"\xff":1}', '{"\ud800":1}'):
        with pytest.raises(ParseError, match=r"^x listing: "):
            decode(decoder, body, "x listing")


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@settings(max_examples=300)
@given(st.text(max_size=40), surrogates, st.data())
def test_msgspec_refuses_text_only_with_the_decode_errors(text: str, surrogate: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(text)))
    for frame in (text, text[:at] + surrogate + text[at:], "[" * 5_000 + text):
        with contextlib.suppress(DECODE_ERRORS):
            msgspec.json.decode(frame)


# --- times --------------------------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1)
kraken_like = utc_time_parser("k", leap_second=True)
coinbase_like = utc_time_parser("c", zones=("+00:00", ""))


@settings(max_examples=500)
@given(
    st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),  # 0001-01-01 .. 9999-12-31
    st.integers(min_value=0, max_value=999_999_999),
    st.integers(min_value=0, max_value=9),
    st.sampled_from(["Z", "+00:00", ""]),
)
def test_utc_times_convert_exactly(seconds: int, nanos: int, places: int, zone: str) -> None:
    fraction = f"{nanos:09d}"[:places]
    text = (EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds") + (f".{fraction}" if places else "")
    expected = seconds * 1_000_000_000 + (int(fraction) * 10 ** (9 - places) if places else 0)
    assert coinbase_like(text + zone) == expected
    if zone == "Z":
        assert kraken_like(text + zone) == expected
    else:
        with pytest.raises(ParseError, match=r"^k: timestamp"):
            kraken_like(text + zone)


def test_a_leap_second_is_read_only_where_allowed() -> None:
    assert kraken_like("2016-12-31T23:59:60Z") == kraken_like("2017-01-01T00:00:00Z")
    assert kraken_like("2016-12-31T23:59:60.5Z") == kraken_like("2017-01-01T00:00:00.5Z")
    with pytest.raises(ParseError):
        coinbase_like("2016-12-31T23:59:60Z")
    with pytest.raises(ParseError):
        kraken_like("2016-12-31T23:59:61Z")


@pytest.mark.parametrize(
    "text",
    ["", "x", "2021-04-17", "2021-04-17 16:43:37Z", "2021-04-17T16:43:37.Z", "2021-04-17T16:43:37.1234567890Z",
     "2021-02-30T00:00:00Z", "2021-04-17T24:00:00Z", "2021-04-17T23:60:00Z", "0000-01-01T00:00:00Z",
     "2021-04-17T16:43:3\u0663Z", "2021-04-17T16:43:37.74264\uff18Z", "2021-04-17T16:43:37.00000_Z",
     "2021-04-17T16:43:37+01:00", "2021-04-17T16:43:37.1+00:00Z", "2021-04-17T16:43:37Z ", "+2021-04-17T16:43:37Z",
     "2021-04-17T16:43:37.-1Z", "2021-04-17T16:43:37,1Z", "2021-04-17T16:43:37.089723z"],
)  # fmt: skip
def test_malformed_times_are_refused(text: str) -> None:
    for parse_time in (kraken_like, coinbase_like):
        with pytest.raises(ParseError):
            parse_time(text)


@settings(max_examples=500)
@given(st.text(max_size=40) | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,10})?(Z|\+00:00)?\Z"))
def test_any_text_is_a_time_or_a_parse_error(text: str) -> None:
    for parse_time in (kraken_like, coinbase_like):
        with contextlib.suppress(ParseError):
            assert isinstance(parse_time(text), int)


def test_times_stay_exact_past_the_cache_limit() -> None:
    parse_time = utc_time_parser("x")
    for second in range(0, 2 * (CACHE_LIMIT + 10), 2):
        text = (EPOCH + timedelta(seconds=second)).isoformat() + ".000001Z"
        assert parse_time(text) == second * 1_000_000_000 + 1_000


def test_epoch_ms_fits_int64_nanoseconds() -> None:
    class Stamped(msgspec.Struct):
        ts: EpochMs

    top = (2**63 - 1) // 1_000_000
    assert msgspec.json.decode(f'{{"ts":{top}}}', type=Stamped).ts * 1_000_000 < 2**63
    for bad in (-1, top + 1):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(f'{{"ts":{bad}}}', type=Stamped)


def test_ascii_digits_are_only_0_to_9() -> None:
    assert ascii_digits("0123456789")
    assert not any(ascii_digits(text) for text in ("", "1.5", "-1", "\u0663", "\uff18", "\u00b2"))


# --- symbols ------------------------------------------------------------------------------------------------


class Counting:
    """A normalize function that records its calls; ``BAD`` is refused."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, registry: InstrumentRegistry, native: str) -> str:
        self.calls.append(native)
        if native == "BAD":
            raise ParseError("x: 'BAD' is not a symbol name")
        return native.upper()


def test_the_symbol_cache_remembers_names_per_registry() -> None:
    normalize = Counting()
    cache, registry = SymbolCache(normalize), InstrumentRegistry()
    assert [cache.get(registry, "btcusdt") for _ in range(3)] == ["BTCUSDT"] * 3
    assert normalize.calls == ["btcusdt"]
    cache.get(InstrumentRegistry(), "btcusdt")  # another registry: asked again
    assert normalize.calls == ["btcusdt"] * 2


def test_the_symbol_cache_forgets_when_the_registry_learns_an_instrument() -> None:
    normalize = Counting()
    cache, registry = SymbolCache(normalize), InstrumentRegistry()
    cache.get(registry, "btcusdt")
    version = registry.version
    registry.add(Instrument("x", "BTCUSDT", "BTC", "USDT"))
    assert registry.version == version + 1
    cache.get(registry, "btcusdt")
    cache.get(registry, "btcusdt")
    assert normalize.calls == ["btcusdt"] * 2


def test_the_symbol_cache_is_bounded_and_does_not_remember_refusals() -> None:
    normalize = Counting()
    cache, registry = SymbolCache(normalize), InstrumentRegistry()
    for _ in range(2):
        with pytest.raises(ParseError):
            cache.get(registry, "BAD")
    assert normalize.calls == ["BAD", "BAD"]
    names = [f"n{i}" for i in range(CACHE_LIMIT + 1)]
    for name in names:
        cache.get(registry, name)
    normalize.calls.clear()
    cache.get(registry, names[-1])
    assert normalize.calls == []
    cache.get(registry, names[0])  # the cache was full when the last name came: it started over
    assert normalize.calls == [names[0]]


def test_registry_versions_count_additions() -> None:
    instruments = [Instrument("x", "A-B", "A", "B"), Instrument("x", "C-D", "C", "D")]
    assert InstrumentRegistry().version == 0
    assert InstrumentRegistry(instruments).version == 2


LISTED = InstrumentRegistry([Instrument("x", "XBT-USD", "BTC", "USD", "perpetual", "PERP")])


def test_listed_names_come_from_the_registry_others_from_the_exchange_rule() -> None:
    normalize = listed_or("x", delimited_name("x"))
    assert normalize(LISTED, "xbt-usd") == "BTCUSD-PERP"
    assert normalize(LISTED, "XDG/EUR") == "DOGEEUR"
    assert normalize(InstrumentRegistry(), "XBT-USD") == "BTCUSD"
    with pytest.raises(ParseError, match=r"^x: cannot split 'BTCUSD'"):
        normalize(LISTED, "BTCUSD")
    with pytest.raises(ParseError, match=r"^x: "):
        normalize(LISTED, "BTC-")


def test_plain_names_are_the_symbol_itself() -> None:
    assert plain_name("x")("btcUSDT") == "BTCUSDT"
    for bad in ("BTC USDT", "BTC/USDT", "", "A" * 41, "BTC\u0663"):
        with pytest.raises(ParseError, match="is not a symbol name"):
            plain_name("x")(bad)
    with pytest.raises(ParseError, match=r"^y: 'B-C' is not a spot symbol name$"):
        plain_name("y", "spot symbol name")("B-C")


def test_plain_native_symbols() -> None:
    assert plain_native_symbol("x", "BTCUSD-PERP", LISTED) == "XBT-USD"
    assert plain_native_symbol("x", "ethusdt", LISTED) == "ETHUSDT"
    with pytest.raises(SymbolError):
        plain_native_symbol("x", "ETH-USDT", LISTED)


def test_listed_instruments_get_normalized_asset_codes_or_are_left_out() -> None:
    assert listed_instrument("x", "XBTUSD", "xbt", "USD") == Instrument("x", "XBTUSD", "BTC", "USD")
    assert listed_instrument("x", "B-27DEC24", "b", "usdt", "future", "241227") == Instrument(
        "x", "B-27DEC24", "B", "USDT", "future", "241227"
    )
    assert listed_instrument("x", "ETH2.S/ETH", "ETH2.S", "ETH") is None
    assert listed_instrument("x", "A", "A", "") is None


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=12))
def test_batches_cut_in_order_and_number_from_one(items: list[int], size: int) -> None:
    numbered = batches(items, size)
    assert [n for n, _ in numbered] == list(range(1, len(numbered) + 1))
    assert [item for _, batch in numbered for item in batch] == items
    assert all(len(batch) == size for _, batch in numbered[:-1])
    assert all(0 < len(batch) <= size for _, batch in numbered)


# --- every parser: any frame is events or a ParseError -------------------------------------------------------

SPECS: dict[str, ExchangeSpec] = {name: get_spec(name) for name in REGISTRY} | {"bybit-linear": spec_for("linear")}
CTX = ParseContext(InstrumentRegistry(), 1_700_000_000_000_000_000)
DEEP = "[" * 100_000
DEEP_OBJECT = '{"a":' * 100_000
DEEP_FRAMES = [
    DEEP,
    DEEP + "]" * 100_000,
    DEEP_OBJECT,
    DEEP_OBJECT + "1" + "}" * 100_000,
    '{"stream":"btcusdt@trade","data":' + DEEP,
    '{"stream":"btcusdt@trade","data":' + DEEP_OBJECT,
    '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":' + DEEP,
    '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":' + DEEP,
    '{"type":"match","product_id":' + DEEP,
    '{"type":"heartbeat","x":' + DEEP,
    '{"channel":"trade","type":"update","data":' + DEEP,
    '{"channel":"ohlc","data":' + DEEP_OBJECT,
    "[0," + DEEP,
]
SURROGATE_FRAMES = [
    "\ud800",
    '"\udfff"',
    "pong\ud800",
    '{"stream":"btcusdt@trade","data":{"s":"\ud800"}}',
    '{"stream":"\ud800@trade","data":{}}',
    '{"arg":{"channel":"trades","instId":"\udbff"},"data":[]}',
    '{"topic":"publicTrade.\ud83d","type":"snapshot","ts":1,"data":[]}',
    '{"type":"match","product_id":"\ud800"}',
    '{"type":"\ud800"}',
    '{"channel":"trade","type":"update","data":[{"symbol":"\ud800"}]}',
    '{"method":"pong","x":"\udc00"}',
    '[0,[],"trade","\ud800"]',
]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("frame", DEEP_FRAMES, ids=lambda frame: f"{frame[:40]}...")
def test_deeply_nested_frames_are_parse_errors(name: str, frame: str) -> None:
    parse = SPECS[name].parse
    with pytest.raises(ParseError):
        parse(frame, CTX)
    with pytest.raises(ParseError):
        parse(frame.encode(), CTX)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("frame", SURROGATE_FRAMES, ids=ascii)
def test_frames_with_a_lone_surrogate_are_parse_errors(name: str, frame: str) -> None:
    parse = SPECS[name].parse
    with pytest.raises(ParseError):
        parse(frame, CTX)
    with contextlib.suppress(ParseError):  # as bytes: not UTF-8, refused unless in a value the parser skips
        assert isinstance(parse(frame.encode("utf-8", "surrogatepass"), CTX), list)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SPECS)), st.text(max_size=60), surrogates, st.data())
def test_a_surrogate_anywhere_in_a_str_frame_is_a_parse_error(
    name: str, text: str, surrogate: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(text)))
    with pytest.raises(ParseError):
        SPECS[name].parse(text[:at] + surrogate + text[at:], CTX)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("body", [DEEP.encode(), DEEP_OBJECT.encode(), b"\xff{}", b"{\xed\xa0\x80}"])
def test_rest_bodies_that_cannot_be_decoded_are_parse_errors(name: str, body: bytes) -> None:
    spec = SPECS[name]
    readers: list[Any] = [spec.parse_instruments]
    if spec.parse_book_snapshot is not None:
        parse_book_snapshot = spec.parse_book_snapshot
        readers.append(lambda data: parse_book_snapshot(data, "X", 1))
    for read in readers:
        with pytest.raises(ParseError):
            read(body)
