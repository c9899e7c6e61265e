"""Incremental technical indicators on closed klines: pure, exact and serializable.

The triad, the same in the stream worker, the offline command and the tests::

    indicator = parse_spec("rsi_14")          # a fresh, configured indicator (or indicator.initialize())
    value = indicator.update(kline)           # IndicatorValue, or None while warming up
    data = indicator.to_bytes()               # the whole state; from_bytes(data) gives it back

Conventions (each class's docstring has the details):

- Arithmetic is Decimal, never float: sums and products exact, every division and square root rounded once to 34
  significant digits half-even; nothing quantized (``core``). Emitted values have at most 34 significant digits.
- Updates are O(1) and a state is O(period): windows are bounded ring buffers with exact running sums, never a
  recomputation over the window.
- Revisions: a kline with the latest ``open_time`` and a revision not lower than the latest's *replaces* it: the
  value is recomputed and the state is exactly what it would be had the corrected kline come first (windowed
  indicators swap the item and adjust their exact sums; recursive ones recompute from the accumulator kept from
  before the latest kline). For a lone indicator a correction of an older kline, or an older revision of the
  latest, is *stale*: the state is unchanged and ``update`` returns None (``classify(kline)`` says so beforehand).
  Applying it needs the klines since then, for the recursive indicators (EMA, RSI, ATR, MACD) and every later
  value: ``series.Series`` keeps them, for all indicators of one (instrument, interval), as far back as the kline
  aggregator can correct (``max_lateness_ms``), replays them on such a correction and re-emits the values that
  changed with a higher revision; only corrections older than that stay stale. The stream worker uses it. Gaps
  (a missing kline) are not filled: indicators count klines, as every charting library does.
- Output keys: ``value`` for single-valued indicators; ``macd/signal/hist`` and ``lower/middle/upper``.
- Warm-up: SMA/WMA/EMA/BBANDS/ATR emit from the ``period``-th kline, RSI from the (period + 1)-th, MACD from the
  (slow + signal - 1)-th, VWAP once its UTC-day session has volume.

Adding an indicator: one class (a module of its family) and one line in ``INDICATORS``; a new kline field it reads
goes into ``series.Bar`` too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Union

import msgspec

from market_ingestor.indicators.averages import EMA, SMA, WMA
from market_ingestor.indicators.base import (
    Indicator,
    IndicatorError,
    IndicatorInputError,
    IndicatorSpecError,
    IndicatorStateError,
    Update,
    decode_state,
)
from market_ingestor.indicators.momentum import MACD, RSI
from market_ingestor.indicators.volatility import ATR, BollingerBands
from market_ingestor.indicators.volume import VWAP
from market_ingestor.model import IndicatorValue, Kline

# name (the spec's first part, and the class's msgspec tag) -> class
INDICATORS: dict[str, type[Indicator]] = {
    "sma": SMA,
    "ema": EMA,
    "wma": WMA,
    "rsi": RSI,
    "macd": MACD,
    "bbands": BollingerBands,
    "atr": ATR,
    "vwap": VWAP,
}

# The set the worker computes unless configured otherwise, and the benchmark's.
DEFAULT_SPECS: tuple[str, ...] = (
    "sma_20",
    "ema_20",
    "wma_20",
    "rsi_14",
    "macd_12_26_9",
    "bbands_20_2",
    "atr_14",
    "vwap",
)


def parse_spec(spec: str) -> Indicator:
    """A fresh indicator from its canonical spec: ``rsi_14``, ``macd_12_26_9``, ``bbands_20_2``, ``vwap``.

    Raises ``IndicatorSpecError`` naming what is wrong. Only the canonical spelling is accepted (``rsi_14``, not
    ``rsi_014``; ``bbands_20_2``, not ``bbands_20_2.0``): the spec is the indicator's name in its values and its
    state key, so two spellings of one indicator would be two indicators.
    """
    kind, *args = spec.split("_")
    cls = INDICATORS.get(kind)
    if cls is None:
        known = ", ".join(sorted(INDICATORS))
        raise IndicatorSpecError(f"indicator spec {spec!r}: unknown indicator {kind!r}; known: {known}")
    if len(args) != len(cls.PARAMS):
        raise IndicatorSpecError(
            f"indicator spec {spec!r}: {kind} takes {len(cls.PARAMS)} parameter(s), got {len(args)}; "
            f"write {cls.usage()}"
        )
    values: dict[str, Any] = {}
    for param, text in zip(cls.PARAMS, args, strict=True):
        try:
            values[param.field] = param.parse(text)
        except ValueError as exc:
            raise IndicatorSpecError(
                f"indicator spec {spec!r}: {kind} {param.field} must be {exc}, got {text!r}; write {cls.usage()}"
            ) from None
    try:
        indicator = cls(**values)
    except IndicatorSpecError as exc:
        raise IndicatorSpecError(f"indicator spec {spec!r}: {exc}") from None
    if indicator.name != spec:
        raise IndicatorSpecError(f"indicator spec {spec!r} is not canonical: write {indicator.name!r}")
    return indicator


_any_decoder: msgspec.msgpack.Decoder[Any] | None = None


def from_bytes(data: bytes) -> Indicator:
    """Any registered indicator from its ``to_bytes``; raises ``IndicatorStateError`` for bytes that are not one."""
    global _any_decoder
    if _any_decoder is None:  # built on first use: the union of every registered class, dispatched on its tag
        _any_decoder = msgspec.msgpack.Decoder(Union[tuple(INDICATORS.values())])  # noqa: UP007
    indicator: Indicator = decode_state(_any_decoder, data)
    return indicator


def compute(spec: str, klines: Iterable[Kline]) -> list[IndicatorValue]:
    """Every value a fresh ``spec`` indicator emits for ``klines`` in order: a revised latest kline yields a second
    value for its ``open_time`` (higher revision), a stale one none. On a final series (each ``open_time`` once, at
    its highest revision) these are the values the worker's latest ones equal (``series.Series``)."""
    indicator = parse_spec(spec)
    values = []
    for kline in klines:
        value = indicator.update(kline)
        if value is not None:
            values.append(value)
    return values


__all__ = [
    "ATR",
    "DEFAULT_SPECS",
    "EMA",
    "INDICATORS",
    "MACD",
    "RSI",
    "SMA",
    "VWAP",
    "WMA",
    "BollingerBands",
    "Indicator",
    "IndicatorError",
    "IndicatorInputError",
    "IndicatorSpecError",
    "IndicatorStateError",
    "Update",
    "compute",
    "from_bytes",
    "parse_spec",
]
