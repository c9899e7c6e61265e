"""The indicator base class: revision handling, serialization, parameters, errors.

An indicator *is* its state: a mutable msgspec Struct holding its parameters and everything it needs to go on,
so ``to_bytes`` is the whole of it and the stream worker keeps one per (exchange, symbol, interval, indicator) in
its RocksDB table. Subclasses implement ``_apply`` and ``name``; the base decides what a kline means for the
series (``classify``) and turns ``_apply``'s values into an ``IndicatorValue``.

Errors (all under ``MarketIngestorError``)::

    IndicatorError
    ├── IndicatorSpecError    a spec or parameter that names no valid indicator ("rsi_x", "macd_26_12_9")
    ├── IndicatorInputError   a kline the indicator cannot take: not closed, or digits beyond exact arithmetic
    └── IndicatorStateError   stored bytes that do not decode to a valid indicator state
"""

from __future__ import annotations

import copy
import decimal
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Self

import msgspec

from market_ingestor.errors import MarketIngestorError
from market_ingestor.indicators.core import EXACT
from market_ingestor.model import IndicatorValue, Kline

MAX_PERIOD = 10_000  # the state is rewritten on every kline and a window costs O(period) bytes of it


class IndicatorError(MarketIngestorError):
    """Root of the indicator errors."""


class IndicatorSpecError(IndicatorError, ValueError):
    """A spec (``rsi_14``) or parameter that names no valid indicator; the message says what to write."""


class IndicatorInputError(IndicatorError, ValueError):
    """A kline the indicator cannot take; the indicator's state is unchanged."""


class IndicatorStateError(IndicatorError):
    """Stored state bytes that do not decode; deleting the key makes the indicator warm up again."""


class Update(enum.Enum):
    """What a kline means for an indicator's series (``Indicator.classify``)."""

    APPEND = "append"  # after the latest kline: extends the series
    # The latest kline again, same or higher revision: its value is recomputed. (For a ``series.Series``: a
    # kline of its history, or one to insert into it: the history is replayed from it on.)
    REPLACE = "replace"
    STALE = "stale"  # an older kline, or an older revision of the latest: ignored, the state is unchanged


# --- parameters -----------------------------------------------------------------------------------------------

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True)
class Param:
    """One positional parameter of a spec: ``rsi_14`` sets ``period`` to 14."""

    field: str  # the Struct field it sets; its name in messages and in the usage line
    parse: Callable[[str], Any]  # text -> value; raises ValueError saying what was expected
    check: Callable[[Any], str | None]  # why a value is out of range, or None


def _parse_whole(text: str) -> int:
    if not _WHOLE.fullmatch(text):
        raise ValueError("a whole number")
    return int(text)


def _check_period(value: Any) -> str | None:
    if type(value) is not int or not 1 <= value <= MAX_PERIOD:
        return f"must be a whole number from 1 to {MAX_PERIOD}"
    return None


def _parse_decimal(text: str) -> Decimal:
    if not _DECIMAL.fullmatch(text):
        raise ValueError("a decimal number such as 2 or 2.5")
    return Decimal(text)


def _check_multiplier(value: Any) -> str | None:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        return "must be a decimal number greater than 0"
    return None


def period(field: str = "period") -> Param:
    return Param(field, _parse_whole, _check_period)


def multiplier(field: str) -> Param:
    return Param(field, _parse_decimal, _check_multiplier)


def plain(value: Decimal) -> str:
    """A parameter as a spec writes it: ``2`` for ``Decimal("2.0")``, ``20`` rather than ``2E+1``."""
    return format(value.normalize(), "f")


# --- the base class -------------------------------------------------------------------------------------------

_ENCODER = msgspec.msgpack.Encoder()  # Decimals encode as their exact strings
_DECODERS: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def kind_of(cls: type[Indicator]) -> str:
    """The registry name of an indicator class, which is also its tag in the serialized state."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f'{cls.__name__} declares no tag: class {cls.__name__}(Indicator, tag="name", kw_only=True)')
    return tag


def decode_state(decoder: msgspec.msgpack.Decoder[Any], data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise IndicatorStateError(
            f"indicator state does not decode ({exc}); delete it and the indicator warms up again"
        ) from exc


class Indicator(msgspec.Struct, kw_only=True, tag_field="kind", gc=False):
    """Base of every indicator. Subclasses declare ``tag=<registry name>``, their ``PARAMS`` fields, their state
    fields (with defaults: a fresh indicator is warming up) and implement ``name`` and ``_apply``.

    ``update(kline)`` is the whole protocol: it appends a new kline, replaces the latest one when a revision of it
    arrives (same ``open_time``, revision not lower), and ignores anything older (see ``Update``).
    """

    PARAMS: ClassVar[tuple[Param, ...]] = ()
    OUTPUTS: ClassVar[tuple[str, ...]] = ("value",)
    # The mutable state fields (each with a ``copy()``), which ``copy`` copies; every other field is immutable
    # (ints, Decimals, frozen accumulators) and shared. ``test_a_copy_is_independent`` checks every indicator.
    MUTABLE: ClassVar[tuple[str, ...]] = ()

    last_open_time: int | None = None  # of the latest kline applied; None before the first
    last_revision: int = 0  # of that kline

    @property
    def name(self) -> str:
        """The canonical spec of this instance (``rsi_14``): ``IndicatorValue.name`` and ``parse_spec``'s input."""
        raise NotImplementedError

    def _apply(self, kline: Kline, replace: bool) -> dict[str, Decimal] | None:
        """Fold ``kline`` into the state, replacing the latest kline's contribution when ``replace``; return the
        values for it, or None while warming up. Runs in the ``EXACT`` context. Must compute everything that
        can raise before it assigns anything, so that a failed update leaves the state as it was."""
        raise NotImplementedError

    def _problem(self) -> str | None:
        """Why the state fields are inconsistent with the parameters (a corrupt stored state), or None."""
        return None

    def __post_init__(self) -> None:
        # Runs on construction and on decoding, so neither a bad spec nor corrupt bytes yields an indicator.
        for param in self.PARAMS:
            value = getattr(self, param.field)
            reason = param.check(value)
            if reason:
                raise IndicatorSpecError(f"{kind_of(type(self))} {param.field} {reason}, got {value!r}")
        problem = self._problem()
        if problem:  # a ValueError: decoding wraps it, and decode_state turns that into an IndicatorStateError
            raise ValueError(f"{self.name}: {problem}")

    @classmethod
    def usage(cls) -> str:
        """How a spec for this indicator is written: ``macd_<fast>_<slow>_<signal>``."""
        return "_".join([kind_of(cls), *(f"<{param.field}>" for param in cls.PARAMS)])

    def initialize(self) -> Self:
        """A fresh indicator with the same parameters and no history."""
        return type(self)(**{param.field: getattr(self, param.field) for param in self.PARAMS})

    def classify(self, kline: Kline) -> Update:
        last = self.last_open_time
        if last is None or kline.open_time > last:
            return Update.APPEND
        if kline.open_time == last and kline.revision >= self.last_revision:
            return Update.REPLACE
        return Update.STALE

    def update(self, kline: Kline) -> IndicatorValue | None:
        """The value for ``kline``, or None while warming up (and for a ``STALE`` kline, which changes nothing).

        Atomic: it applies fully or raises ``IndicatorInputError`` with the state unchanged.
        """
        if not kline.closed:
            raise IndicatorInputError(
                f"{self.name}: the {kline.interval} kline of {kline.exchange} {kline.symbol} opened at "
                f"{kline.open_time} is not closed; indicators take closed klines only"
            )
        values = self.step(kline)
        if values is None:
            return None
        return IndicatorValue(
            exchange=kline.exchange,
            symbol=kline.symbol,
            interval=kline.interval,
            name=self.name,
            open_time=kline.open_time,
            values=values,
            revision=kline.revision,
        )

    def step(self, kline: Kline) -> dict[str, Decimal] | None:
        """``update`` without the ``IndicatorValue`` (for callers that build their own): the values for a closed
        ``kline``, or None while warming up and for a stale kline. Atomic, as ``update``."""
        how = self.classify(kline)
        if how is Update.STALE:
            return None
        saved = decimal.getcontext()
        try:
            if saved is not EXACT:  # switched only where the caller has not: localcontext() copies a context
                decimal.setcontext(EXACT)
            values = self._apply(kline, how is Update.REPLACE)
        except decimal.DecimalException as exc:
            raise IndicatorInputError(
                f"{self.name}: the kline of {kline.exchange} {kline.symbol} {kline.interval} opened at "
                f"{kline.open_time} has values beyond exact decimal arithmetic ({type(exc).__name__}); "
                "the state is unchanged"
            ) from exc
        finally:
            if saved is not EXACT:
                decimal.setcontext(saved)
        self.last_open_time = kline.open_time
        self.last_revision = kline.revision
        return values

    def copy(self) -> Self:
        """An independent copy of the state, without a round trip through bytes (a series snapshots its states)."""
        twin = copy.copy(self)  # Struct.__copy__: the fields as they are, without __post_init__
        for field in self.MUTABLE:
            setattr(twin, field, getattr(self, field).copy())
        return twin

    def to_bytes(self) -> bytes:
        """The whole state as msgpack, Decimals as their exact strings."""
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """The indicator ``to_bytes`` wrote; for any registered kind use the package's ``from_bytes``."""
        decoder = _DECODERS.get(cls)
        if decoder is None:
            decoder = _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
        indicator: Self = decode_state(decoder, data)
        return indicator
