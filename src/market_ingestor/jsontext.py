"""JSON encoding that writes every ``Decimal`` in plain digits, as the exchange sent it.

msgspec writes a ``Decimal`` as ``str(d)``, which switches to exponent form when the exponent is above 0 or the
adjusted exponent below -6: ``Decimal("0.00000000")`` comes out as ``"0E-8"`` and ``Decimal("0.000000010")`` as
``"1.0E-8"``. ``format(d, "f")`` gives the same coefficient and exponent in plain digits (``"0.00000000"``,
``"0.000000010"``), which is the text ``docs/topics.md`` promises on every wire. Every JSON encoder of ours that
can carry a Decimal (the bus events, the API's answers, the ticker table, the indicator JSON the sink stores,
log lines) is a :class:`JsonEncoder`.

The encode path is hot (ingest publishes ~100k events/s), and msgspec's callable ``decimal_format`` costs a
Python call per Decimal (about 2x slower on a 20-level book delta). So :meth:`JsonEncoder.encode` encodes as
msgspec does natively, and only when the output shows an exponent-form number (``E-8``, ``E+3``: ``str(Decimal)``
always writes the exponent's sign) encodes again with :func:`plain` for every Decimal. A string that merely looks
like one (a symbol ``"XE-1"``) costs the second encode and changes nothing: the second encoder differs only in
how it writes Decimals, so field order, tags, ``omit_defaults`` and everything else are the same bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec

# Where str(Decimal) used exponent form; false positives only cost the second encode.
_EXPONENT = re.compile(rb"E[-+]\d")


def plain(value: Decimal) -> str:
    """The decimal's digits without exponent form: ``0E-8`` -> ``"0.00000000"``, ``1E+3`` -> ``"1000"``.

    The same text as ``format(value, "f")``, but most decimals need no exponent and ``str`` is 3x cheaper."""
    digits = str(value)
    return digits if "E" not in digits else format(value, "f")


def text(value: object) -> str:
    """``str(value)``, but a Decimal in plain digits (:func:`plain`): for text built outside a JSON encoder."""
    return plain(value) if isinstance(value, Decimal) else str(value)


class JsonEncoder:
    """A ``msgspec.json.Encoder`` whose Decimals are JSON strings in plain digits (see the module docstring)."""

    __slots__ = ("_native", "_plain", "_search")

    def __init__(self) -> None:
        self._native = msgspec.json.Encoder(decimal_format="string")
        self._plain = msgspec.json.Encoder(decimal_format=plain)
        self._search = _EXPONENT.search

    def encode(self, obj: object) -> bytes:
        out = self._native.encode(obj)
        if self._search(out) is None:
            return out
        return self._plain.encode(obj)
