"""What the dialects render alike: JSON encoding, decimal and timestamp text, book levels and checksums, and the
answers to client frames. Exchange-neutral and pure, like the dialects that use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

import msgspec

from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator.dialect import ClientRequest, Levels, SimBook

TextLevel = tuple[str, str]  # (price, qty) as the exchange writes them

# One encoder for every dialect: compact JSON, struct fields and dict keys in their order.
encode = msgspec.json.Encoder().encode


def text(value: Decimal) -> str:
    """A number as the exchanges write it: plain decimal digits, never exponent notation (``1E+2`` -> ``100``)."""
    return format(value, "f")


def text_levels(levels: Levels, limit: int | None = None) -> list[TextLevel]:
    """The best ``limit`` levels (all of them by default) as text pairs."""
    return [(format(p, "f"), format(q, "f")) for p, q in levels[:limit]]


def top_checksum(book: SimBook, depth: int, checksum: Callable[[Sequence[TextLevel], Sequence[TextLevel]], int]) -> int:
    """An exchange's checksum of a book's top ``depth`` levels a side, from the same text the frames carry."""
    return checksum(text_levels(book.bids, depth), text_levels(book.asks, depth))


def ms(ts_ns: int) -> int:
    """Nanoseconds -> whole milliseconds, the exchanges' usual time unit."""
    return ts_ns // 1_000_000


SECOND_FORMAT = "%Y-%m-%dT%H:%M:%S"


def utc_second(seconds: int) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS`` in UTC."""
    return time.strftime(SECOND_FORMAT, time.gmtime(seconds))


class SecondTexts(dict[int, str]):
    """Epoch seconds -> their ``YYYY-MM-DDTHH:MM:SS`` text, formatted once per second (frames of one second share
    it) and looked up as ``texts[seconds]``. Bounded: emptied when full."""

    __slots__ = ("_format",)
    LIMIT = 4096

    def __init__(self, format_second: Callable[[int], str] = utc_second) -> None:
        super().__init__()
        self._format = format_second

    def __missing__(self, seconds: int) -> str:
        text = self._format(seconds)
        if len(self) >= self.LIMIT:
            self.clear()
        self[seconds] = text
        return text


def refusal(*replies: str) -> ClientRequest:
    """A client frame the exchange refuses: nothing to act on, only its error replies."""
    return ClientRequest("invalid", replies=replies)


def subscription(
    subscribe: bool, subscriptions: Iterable[tuple[Channel, str]], replies: Iterable[str]
) -> ClientRequest:
    """A subscribe request (an unsubscribe one where ``subscribe`` is false) with the exchange's replies."""
    return ClientRequest("subscribe" if subscribe else "unsubscribe", tuple(subscriptions), tuple(replies))
