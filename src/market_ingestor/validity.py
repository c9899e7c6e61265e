"""The one rule for a valid trade, with its reasons: the exchange parsers (``wire.check_trade``), the kline
aggregation and both workers, ``klines`` and ``db load``, and the sink all ask it.

Every trade: a finite price > 0 and a finite quantity >= 0 (what the aggregation and the database can take from
any writer of ``market.trades``). At the exchange boundary (``market=True``), where frames are untrusted, both
must also be of a market's magnitude (``1E-30 <= x < 1E31``), so the quantity is > 0 there: beyond those bounds a
number is no market's, and ``1E-999999999`` would print as a gigabyte of zeros downstream.
"""

from __future__ import annotations

from decimal import Decimal

from market_ingestor.errors import ParseError
from market_ingestor.model import Trade

# For a finite non-zero decimal the adjusted exponent is in this range exactly when 1E-30 <= |value| < 1E31.
MIN_ADJUSTED_EXPONENT, MAX_ADJUSTED_EXPONENT = -30, 30
SMALLEST = Decimal(f"1E{MIN_ADJUSTED_EXPONENT}")
TOO_LARGE = Decimal(f"1E{MAX_ADJUSTED_EXPONENT + 1}")


def numbers_problem(price: Decimal, qty: Decimal, *, market: bool = False) -> str | None:
    """Why ``price`` and ``qty`` cannot be a trade's, or None (see the module docstring for the rule);
    ``market=True``: at the exchange boundary."""
    if market:
        if not (price.is_finite() and SMALLEST <= price < TOO_LARGE):
            return f"price {price} is not a positive number of a market's magnitude"
        if not (qty.is_finite() and SMALLEST <= qty < TOO_LARGE):
            return f"quantity {qty} is not a positive number of a market's magnitude"
        return None
    if not (price.is_finite() and price > 0):
        return f"price {price} is not a positive number"
    if not (qty.is_finite() and qty >= 0):
        return f"quantity {qty} is not a non-negative number"
    return None


def check_exchange_trade(what: str, price: Decimal, qty: Decimal) -> None:
    """The rule at the exchange boundary for a parser (``wire.check_trade``): ParseError ``"<what>: <reason>"``."""
    # numbers_problem(price, qty, market=True) is None, written out: a parser asks this for every trade it reads.
    if price.is_finite() and qty.is_finite() and SMALLEST <= price < TOO_LARGE and SMALLEST <= qty < TOO_LARGE:
        return
    raise ParseError(f"{what}: {numbers_problem(price, qty, market=True)}")


def trade_problem(trade: Trade) -> str | None:
    """Why a normalized trade cannot be aggregated or stored, or None: ``trade <id>: <reason>``."""
    problem = numbers_problem(trade.price, trade.qty)
    return None if problem is None else f"trade {trade.trade_id}: {problem}"
