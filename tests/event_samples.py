"""One event of each kind, for tests that round-trip, key or identify them (``test_model.py``, ``bus/test_keys.py``)."""

from decimal import Decimal

from market_ingestor.model import BookDelta, BookSnapshot, ControlCommand, IndicatorValue, Kline, Quote, Trade

TRADE = Trade("binance", "NKNUSDT", "123", Decimal("0.35280000"), Decimal("58.00000000"), "buy", 1, 2)

EVENTS = [
    TRADE,
    Quote("okx", "BTCUSDT", Decimal("1"), Decimal("2"), Decimal("3"), Decimal("4"), 5, 6, seq=7),
    BookSnapshot("okx", "BTCUSDT", ((Decimal("1"), Decimal("2")),), ((Decimal("3"), Decimal("4")),), 9, 1, 2),
    BookDelta("bybit", "BTCUSDT", ((Decimal("1"), Decimal("0")),), (), 10, 12, 1, 2, prev_seq=9),
    Kline(
        "binance",
        "BTCUSDT",
        "1m",
        0,
        59_999_999_999,
        *(Decimal(n) for n in "142365"),
        3,
        Decimal("1"),
        Decimal("2"),
        "1",
        "3",
        Decimal("2"),
        True,
        1,
    ),
    IndicatorValue("binance", "BTCUSDT", "1m", "macd_12_26_9", 0, {"macd": Decimal("1.5"), "signal": Decimal("1")}),
    ControlCommand("add", "symbol", "binance", "BTCUSDT", 1),
]
