"""The one trade rule (validity.py), with its reasons, as the parsers, the aggregation and the sink ask it."""

from decimal import Decimal

import pytest

from market_ingestor.model import Kline, Trade
from market_ingestor.sinks.persist import row_problem
from market_ingestor.validity import numbers_problem, trade_problem

D = Decimal


MARKET = " is not a positive number of a market's magnitude"


@pytest.mark.parametrize(
    ("price", "qty", "everywhere", "at_the_exchange"),
    [
        ("1.5", "0.25", None, None),
        ("1.5", "0", None, "quantity 0" + MARKET),
        ("1E+40", "1", None, "price 1E+40" + MARKET),
        ("1", "1E-31", None, "quantity 1E-31" + MARKET),
        ("0", "1", "price 0 is not a positive number", "price 0" + MARKET),
        ("NaN", "1", "price NaN is not a positive number", "price NaN" + MARKET),
        ("-2", "1", "price -2 is not a positive number", "price -2" + MARKET),
        ("1", "-1", "quantity -1 is not a non-negative number", "quantity -1" + MARKET),
        ("1", "Infinity", "quantity Infinity is not a non-negative number", "quantity Infinity" + MARKET),
    ],
)
def test_the_rule_and_its_reasons(price, qty, everywhere, at_the_exchange):
    assert numbers_problem(D(price), D(qty)) == everywhere
    assert numbers_problem(D(price), D(qty), market=True) == at_the_exchange


def test_the_sink_asks_the_trade_rule_for_trades_and_finiteness_for_other_rows():
    bad = Trade("binance", "BTCUSDT", "7", D("-1"), D("1"), "buy", 1, 1)
    assert trade_problem(bad) == row_problem(bad) == "trade 7: price -1 is not a positive number"
    kline = Kline("binance", "BTCUSDT", "1m", 0, 59, *[D("NaN")] * 6, 0, D(0), D(0), None, None, D(1), True)
    assert row_problem(kline) == "kline field open is NaN"
