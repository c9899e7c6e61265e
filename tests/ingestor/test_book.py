from decimal import Decimal as D

from market_ingestor.ingestor.book import BookSync, BookVerdict, OrderBook, level_text
from market_ingestor.model import BookDelta, BookSnapshot


def snapshot(seq: int, checksum: int | None = None) -> BookSnapshot:
    bids = ((D("100.0"), D("1")), (D("99.5"), D("2")))
    asks = ((D("100.5"), D("1.5")), (D("101.0"), D("3")))
    return BookSnapshot("x", "BTCUSDT", bids, asks, seq, 1, 1, checksum)


def delta(first: int, last: int, bids=(), asks=(), prev: int | None = None, checksum: int | None = None) -> BookDelta:
    return BookDelta("x", "BTCUSDT", tuple(bids), tuple(asks), first, last, 1, 1, prev, checksum)


def test_levels_stay_sorted_best_first_and_zero_removes():
    book = OrderBook()
    book.apply_snapshot(snapshot(1).bids, snapshot(1).asks)
    book.apply_levels([(D("100.2"), D("4")), (D("100.0"), D("0"))], [(D("100.4"), D("1"))])
    bids, asks = book.top(5)
    assert bids == [(D("100.2"), D("4")), (D("99.5"), D("2"))]
    assert asks[0] == (D("100.4"), D("1")) and len(asks) == 3
    assert book.best_bid == (D("100.2"), D("4")) and book.best_ask == (D("100.4"), D("1"))


def test_level_text_keeps_the_exchange_digits_without_exponents():
    assert level_text(D("0.00000001")) == "0.00000001"
    assert level_text(D("58.00000000")) == "58.00000000"


def binance_rule(last: int, d: BookDelta) -> bool:
    assert d.first_seq is not None and d.last_seq is not None
    return d.first_seq <= last + 1 <= d.last_seq


def test_deltas_wait_for_a_snapshot_then_chain_by_sequence():
    sync = BookSync(binance_rule, None)
    assert sync.on_delta(delta(5, 6)) is BookVerdict.WAITING
    assert sync.on_snapshot(snapshot(10)) is BookVerdict.OK
    assert sync.on_delta(delta(8, 10)) is BookVerdict.STALE  # buffered before the snapshot: older than it
    assert sync.on_delta(delta(9, 12, bids=[(D("100.1"), D("1"))])) is BookVerdict.OK
    assert sync.on_delta(delta(13, 13)) is BookVerdict.OK
    assert sync.on_delta(delta(15, 16)) is BookVerdict.GAP  # 14 is missing
    assert sync.book.best_bid == (D("100.1"), D("1"))


def test_a_wrong_checksum_is_reported_and_a_right_one_passes():
    def checksum(bids, asks) -> int:
        return len(bids) * 100 + len(asks)

    sync = BookSync(None, checksum, checksum_depth=10)
    assert sync.on_snapshot(snapshot(1, checksum=202)) is BookVerdict.OK
    assert sync.on_delta(delta(2, 2, asks=[(D("102"), D("1"))], checksum=203)) is BookVerdict.OK
    assert sync.on_delta(delta(3, 3, asks=[(D("103"), D("1"))], checksum=203)) is BookVerdict.CHECKSUM
