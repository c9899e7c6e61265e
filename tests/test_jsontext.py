"""Decimals leave in plain digits, exactly as they came in: the one JSON encoder every text output uses."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_ingestor.jsontext import JsonEncoder, plain, text
from market_ingestor.model import Trade, decode, encode

# Digit strings an exchange sends, each of which must come out exactly as it went in.
DIGITS = [
    "0",
    "0.0",
    "0.00000000",
    "0.000000010",
    "0.00000001",
    "0.0000001",
    "0.000001",
    "123.4500",
    "1000",
    "1000.00000000",
    "-0.00000001",
    "-0.00000000",
    "99999999.99999999",
    "0.35280000",
    "58.00000000",
    "0.000000000000000000000000000001",
    "1000000000000000000000000000000",
]


def trade_json(qty: str) -> bytes:
    return (
        b'{"type":"trade","exchange":"binance","symbol":"BTCUSDT","trade_id":"1","price":"64000.01000000",'
        b'"qty":"' + qty.encode() + b'","side":"buy","ts":1,"recv_ts":2}'
    )


@pytest.mark.parametrize("digits", DIGITS)
def test_decode_then_encode_gives_back_the_exchanges_digits(digits: str) -> None:
    assert encode(decode(trade_json(digits))) == trade_json(digits)


@pytest.mark.parametrize("digits", DIGITS)
def test_plain_gives_the_digits_a_decimal_was_made_from(digits: str) -> None:
    assert plain(Decimal(digits)) == digits
    assert text(Decimal(digits)) == digits


@pytest.mark.parametrize(
    ("exponent_form", "digits"),
    [
        ("1E-8", "0.00000001"),
        ("0E-8", "0.00000000"),
        ("1.0E-8", "0.000000010"),
        ("1E+3", "1000"),
        ("-2.5E-7", "-0.00000025"),
    ],
)
def test_exponent_form_from_an_exchange_is_accepted_and_written_in_plain_digits(
    exponent_form: str, digits: str
) -> None:
    event = decode(trade_json(exponent_form))
    assert isinstance(event, Trade) and event.qty == Decimal(exponent_form)  # exact, not through float
    assert encode(event) == trade_json(digits)
    assert encode(decode(encode(event))) == trade_json(digits)  # and stays so on the next hop


@given(st.decimals())
def test_plain_is_format_f_for_every_decimal(value: Decimal) -> None:
    assert plain(value) == format(value, "f")
    assert "E" not in plain(value)


def test_text_of_anything_else_is_str() -> None:
    assert (text(7), text("1E-8"), text(None)) == ("7", "1E-8", "None")


class Reply(msgspec.Struct, tag_field="kind", tag="reply", omit_defaults=True, rename={"amount": "amt"}):
    note: str
    amount: Decimal
    levels: tuple[tuple[Decimal, Decimal], ...] = ()
    extra: dict[str, Decimal] = {}
    seq: int | None = None


ENCODER = JsonEncoder()


def test_the_second_encode_keeps_order_tag_renames_and_omitted_defaults() -> None:
    reply = Reply(
        "x", Decimal("0E-8"), ((Decimal("1.5"), Decimal("0.00000000")),), {"b": Decimal("1E+2"), "a": Decimal(1)}
    )
    assert ENCODER.encode(reply) == (
        b'{"kind":"reply","note":"x","amt":"0.00000000","levels":[["1.5","0.00000000"]],"extra":{"b":"100","a":"1"}}'
    )


def test_a_string_that_looks_like_an_exponent_stays_as_it_is() -> None:
    """Only Decimals change: the check on the bytes only decides whether to look again."""
    assert ENCODER.encode(Reply("1E-8", Decimal("0.5"))) == b'{"kind":"reply","note":"1E-8","amt":"0.5"}'
    assert ENCODER.encode(Reply("1E-8", Decimal("0E-8"))) == b'{"kind":"reply","note":"1E-8","amt":"0.00000000"}'


def test_without_exponent_forms_the_output_is_msgspecs_own() -> None:
    reply = Reply("XE-1 E+ E-", Decimal("64000.01000000"), ((Decimal("1"), Decimal("2.50")),), seq=3)
    assert ENCODER.encode(reply) == msgspec.json.encode(reply)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_decimals_are_written_as_msgspec_writes_them(value: Decimal) -> None:
    assert ENCODER.encode(value) == msgspec.json.encode(value)
