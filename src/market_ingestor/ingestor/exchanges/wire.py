"""Helpers the exchange parsers share: decode errors, number checks, times, symbol names.

A parser turns every frame it cannot normalize into :class:`ParseError` (it goes to the dead-letter topic);
the helpers here raise ParseError themselves or answer ``bool`` so the caller can name the problem. Most of
them run once or more per frame, so they are plain functions without per-call allocation, and the checks are
written out rather than composed where that saves a call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, TypeVar

import msgspec

from market_ingestor.errors import NotNormalized, ParseError, SymbolError
from market_ingestor.instruments import (
    Instrument,
    InstrumentKind,
    InstrumentRegistry,
    make_symbol,
    normalize_asset,
    split_delimited,
)
from market_ingestor.model import Level, MarketEvent
from market_ingestor.validity import (
    MAX_ADJUSTED_EXPONENT,
    MIN_ADJUSTED_EXPONENT,
    SMALLEST,
    TOO_LARGE,
    check_exchange_trade,
)

T = TypeVar("T")

CACHE_LIMIT = 4096  # entries per cache keyed by frame content: the input is untrusted, so caches are bounded


# --- decoding -----------------------------------------------------------------------------------------------

# What msgspec raises for input it cannot decode: MsgspecError for malformed or mistyped JSON, RecursionError for
# very deeply nested input, UnicodeError for text that cannot be encoded (a str frame with a lone surrogate).
DECODE_ERRORS = (msgspec.MsgspecError, UnicodeError, RecursionError)

# The default of an optional ``msgspec.Raw`` field: ``envelope.data is NO_DATA`` says the field was absent.
NO_DATA = msgspec.Raw()


def decode(decoder: msgspec.json.Decoder[T], body: str | bytes, what: str) -> T:
    """A whole body (REST listings, snapshots) decoded, or :class:`ParseError` ``"<what>: <reason>"``."""
    try:
        return decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise ParseError(f"{what}: {exc}") from exc


# --- frames without events ---------------------------------------------------------------------------------


def chatter_or_unhandled(exchange: str, protocol_chatter: frozenset[str]) -> Callable[[str], list[MarketEvent]]:
    """The answer for a well-formed frame that gives no event, by the name of its channel or message type: ``[]``
    when the name is in the exchange's declared ``protocol_chatter``, else :class:`NotNormalized` ("unhandled")."""

    def answer(name: str) -> list[MarketEvent]:
        if name in protocol_chatter:
            return []
        raise NotNormalized(exchange, name, "unhandled")

    return answer


# --- numbers ------------------------------------------------------------------------------------------------

# Magnitudes of a market (validity.py): the adjusted exponent of a finite non-zero decimal is in this range exactly
# when 1E-30 <= |value| < 1E31, which is what the checks compare.
_SMALLEST, _TOO_LARGE = SMALLEST, TOO_LARGE
_ZERO = Decimal(0)


def positive(value: Decimal) -> bool:
    """Finite, > 0 and of a market's magnitude (adjusted exponent -30..30)."""
    return value.is_finite() and _SMALLEST <= value < _TOO_LARGE


def non_negative(value: Decimal) -> bool:
    """:func:`positive`, or a zero whose exponent is in range (``0E-8``: a removed level, as Kraken writes it)."""
    return value.is_finite() and (
        _SMALLEST <= value < _TOO_LARGE
        or (value == _ZERO and MIN_ADJUSTED_EXPONENT <= value.adjusted() <= MAX_ADJUSTED_EXPONENT)
    )


# A trade's price and quantity under the trade rule at the exchange boundary (validity.py): ParseError otherwise.
check_trade = check_exchange_trade


def quote_ok(bid_price: Decimal, bid_qty: Decimal, ask_price: Decimal, ask_qty: Decimal) -> bool:
    """Best bid/ask prices and sizes are all :func:`non_negative` (an empty side may be quoted as 0)."""
    return non_negative(bid_price) and non_negative(bid_qty) and non_negative(ask_price) and non_negative(ask_qty)


def level_ok(price: Decimal, qty: Decimal) -> bool:
    """A book level: a :func:`positive` price and a :func:`non_negative` quantity (0 removes the level)."""
    return positive(price) and non_negative(qty)


def levels_ok(levels: Iterable[Level]) -> bool:
    """Every ``(price, qty)`` is a :func:`level_ok` book level."""
    return all(price.is_finite() and _SMALLEST <= price < _TOO_LARGE and non_negative(qty) for price, qty in levels)


# --- times --------------------------------------------------------------------------------------------------

# Exchange milliseconds since the epoch that still fit int64 nanoseconds; msgspec refuses others while decoding.
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=(2**63 - 1) // 1_000_000)]

_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


def ascii_digits(text: str) -> bool:
    """Only ``0``-``9`` (``str.isdigit`` alone also accepts other scripts' digits and superscripts)."""
    return text.isascii() and text.isdigit()


def utc_time_parser(exchange: str, *, zones: Sequence[str] = (), leap_second: bool = False) -> Callable[[str], int]:
    """A function ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` (ISO-8601 / RFC 3339, UTC) -> integer nanoseconds since the
    epoch, computed from the digits (exact; the fraction has 1-9 digits).

    ``Z`` is always accepted as the zone; ``zones`` adds other spellings of UTC (``"+00:00"``, ``""`` for none).
    With ``leap_second`` second ``60`` is read (as the next minute's ``:00``). Bad text raises
    :class:`ParseError` naming ``exchange``. Each validated ``YYYY-MM-DDTHH:MM:SS`` is remembered (bounded), so
    a frame's time usually costs a dict lookup and one ``int``."""
    suffixes = ("Z", *sorted(zones, key=len, reverse=True))  # "" matches anything: it goes last
    last_second = "60" if leap_second else "59"
    second_ns: dict[str, int] = {}

    def bad(text: str, why: str = "") -> ParseError:
        return ParseError(f"{exchange}: timestamp {text!r} is not ISO-8601 UTC (YYYY-MM-DDTHH:MM:SS[.fraction]Z){why}")

    def new_second(text: str) -> int:
        head = text[:19]
        if not (
            len(head) == 19
            and head[4] == head[7] == "-"
            and head[10] == "T"
            and head[13] == head[16] == ":"
            and ascii_digits(head[:4] + head[5:7] + head[8:10] + head[11:13] + head[14:16] + head[17:19])
            and head[17:19] <= last_second
        ):
            raise bad(text)
        try:
            minute = datetime(int(head[:4]), int(head[5:7]), int(head[8:10]), int(head[11:13]), int(head[14:16]))
        except ValueError as exc:
            raise bad(text, f": {exc}") from None
        days = minute.toordinal() - _EPOCH_ORDINAL
        ns = (days * 86_400 + minute.hour * 3_600 + minute.minute * 60 + int(head[17:19])) * 1_000_000_000
        if len(second_ns) >= CACHE_LIMIT:
            second_ns.clear()
        second_ns[head] = ns
        return ns

    def utc_ns(text: str) -> int:
        ns = second_ns.get(text[:19])
        if ns is None:
            ns = new_second(text)
        if len(text) == 27 and text[19] == "." and text[26] == "Z":  # microseconds, as exchanges send them
            digits = text[20:26]
            if digits.isdigit() and digits.isascii():
                return ns + int(digits) * 1_000
        rest = text[19:]
        for suffix in suffixes:
            if rest.endswith(suffix):
                fraction = rest[: len(rest) - len(suffix)]
                break
        else:
            raise bad(text)
        if not fraction:
            return ns
        digits = fraction[1:]
        if fraction[0] != "." or not 1 <= len(digits) <= 9 or not ascii_digits(digits):
            raise bad(text)
        return ns + int(digits) * 10 ** (9 - len(digits))

    return utc_ns


# --- symbols ------------------------------------------------------------------------------------------------

# registry, native name -> normalized symbol, or ParseError
Normalize = Callable[[InstrumentRegistry, str], str]


class SymbolCache:
    """native name -> normalized symbol (by an exchange's ``normalize``), remembered per registry and bounded.

    A registry's ``version`` goes up with every instrument it learns; the cache then forgets what it knew, since
    a name the exchange's naming rule had to guess may now be listed under another symbol. Names ``normalize``
    refuses (ParseError) are not remembered."""

    __slots__ = ("_names", "_normalize", "_registry", "_version")

    def __init__(self, normalize: Normalize) -> None:
        self._normalize = normalize
        self._names: dict[str, str] = {}
        self._registry: InstrumentRegistry | None = None
        self._version = -1

    def get(self, registry: InstrumentRegistry, native: str) -> str:
        if registry is not self._registry or registry.version != self._version:
            self._names.clear()
            self._registry, self._version = registry, registry.version
        symbol = self._names.get(native)
        if symbol is None:
            symbol = self._normalize(registry, native)
            if len(self._names) >= CACHE_LIMIT:
                self._names.clear()
            self._names[native] = symbol
        return symbol


def listed_or(exchange: str, fallback: Callable[[str], str]) -> Normalize:
    """A ``normalize``: the listed instrument's symbol, else ``fallback(native)`` (the exchange's naming rule,
    which raises ParseError for a name it cannot read)."""

    def normalize(registry: InstrumentRegistry, native: str) -> str:
        try:
            return registry.by_native(exchange, native).symbol
        except SymbolError:
            return fallback(native)

    return normalize


def plain_name(exchange: str, what: str = "symbol name") -> Callable[[str], str]:
    """The naming rule of exchanges whose spot names are ``BASEQUOTE`` already (any case): the name, upper case."""

    def fallback(native: str) -> str:
        if not (native.isascii() and native.isalnum() and len(native) <= 40):
            raise ParseError(f"{exchange}: {native!r} is not a {what}")
        return native.upper()

    return fallback


def delimited_name(exchange: str) -> Callable[[str], str]:
    """The naming rule of names that carry their delimiter: ``BTC-USD``, ``XBT/USD`` -> ``BTCUSD``."""

    def fallback(native: str) -> str:
        try:
            return make_symbol(*split_delimited(native))
        except SymbolError as exc:
            raise ParseError(f"{exchange}: {exc}") from None

    return fallback


def plain_native_symbol(exchange: str, symbol: str, registry: InstrumentRegistry) -> str:
    """The listed native name of ``symbol``; unlisted, for ``BASEQUOTE`` exchanges, the symbol itself (upper case).
    Raises SymbolError for an unlisted symbol that is not plain letters and digits."""
    try:
        return registry.by_symbol(exchange, symbol).native
    except SymbolError:
        if symbol.isascii() and symbol.isalnum():
            return symbol.upper()
        raise


def listed_instrument(
    exchange: str, native: str, base: str, quote: str, kind: InstrumentKind = "spot", suffix: str = ""
) -> Instrument | None:
    """A listing entry as an :class:`Instrument` with normalized asset codes; None when a code is not plain
    letters/digits: such an instrument cannot be named, and listings leave it out."""
    try:
        return Instrument(exchange, native, normalize_asset(base), normalize_asset(quote), kind, suffix)
    except SymbolError:
        return None


# --- requests -----------------------------------------------------------------------------------------------


def batches(items: Sequence[T], size: int) -> list[tuple[int, Sequence[T]]]:
    """``items`` in slices of at most ``size``, numbered from 1 (for exchanges that cap a request's length)."""
    return [(n, items[i : i + size]) for n, i in enumerate(range(0, len(items), size), 1)]
