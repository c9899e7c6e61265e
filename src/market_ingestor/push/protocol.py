"""The push gateway's client protocol (documented for clients in docs/push.md): requests, replies, update frames.

Everything here is pure: a request is bytes in, a validated request (or a :class:`PushRequestError` naming what is
wrong) out, and every reply and update is encoded once, to an :class:`Outgoing` (its JSON and its WebSocket
frame). Updates embed the bus record as it is (already JSON, Decimal prices as strings), so a record is never
re-encoded, neither per client nor at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Literal, NamedTuple

import msgspec
from websockets.frames import Frame, Opcode

from market_ingestor.errors import MarketIngestorError

Pair = tuple[str, str]  # (channel, symbol): the unit of subscription

TRADE, QUOTE = "trade", "quote"
KLINE_PREFIX, INDICATOR_PREFIX = "kline.", "indicator."

# An exchange name (lower case) and a normalized symbol (BTCUSDT, BTCUSD-PERP), as bus keys spell them.
SYMBOL_RE = re.compile(r"[a-z0-9]{1,20}\.[A-Z0-9]{1,30}(-[A-Z0-9]{1,20})?")

ErrorCode = Literal[
    "bad_json", "bad_request", "unknown_action", "unknown_channel", "bad_symbol", "too_many_subscriptions", "oversize"
]


class PushRequestError(MarketIngestorError):
    """A client message the gateway cannot serve; ``code`` and ``reason`` go back in an error reply."""

    def __init__(self, code: ErrorCode, reason: str, request_id: str | int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.request_id = request_id


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    action: str
    id: str | int | None = None  # echoed in the reply, for clients that match replies to requests


class PairsRequest(_Request, frozen=True):
    channels: list[str]
    symbols: list[str]

    def pairs(self) -> list[Pair]:
        """Every (channel, symbol) the request names, without repeats, in request order."""
        return list(dict.fromkeys((channel, symbol) for channel in self.channels for symbol in self.symbols))


class Subscribe(PairsRequest, frozen=True):
    pass


class Unsubscribe(PairsRequest, frozen=True):
    pass


class Ping(_Request, frozen=True):
    pass


Request = Subscribe | Unsubscribe | Ping
ACTIONS: dict[str, type[Request]] = {"subscribe": Subscribe, "unsubscribe": Unsubscribe, "ping": Ping}


def known_channels(intervals: Iterable[str], indicators: Iterable[str]) -> frozenset[str]:
    """What a client may subscribe to: trades, quotes, and the klines and indicators the worker produces."""
    return frozenset(
        [TRADE, QUOTE, *(KLINE_PREFIX + i for i in intervals), *(INDICATOR_PREFIX + n for n in indicators)]
    )


def _request_id(obj: dict[str, object]) -> str | int | None:
    value = obj.get("id")
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def parse_request(data: bytes, max_bytes: int, channels: frozenset[str]) -> Request:
    """One client message -> a valid request; raises :class:`PushRequestError` with a code and a reason."""
    if len(data) > max_bytes:
        raise PushRequestError("oversize", f"message of {len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise PushRequestError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PushRequestError("bad_request", f"expected a JSON object, got {type(obj).__name__}")
    request_id = _request_id(obj)
    action = obj.get("action")
    cls = ACTIONS.get(action) if isinstance(action, str) else None
    if cls is None:
        expected = ", ".join(ACTIONS)
        raise PushRequestError("unknown_action", f"unknown action {action!r} (expected one of: {expected})", request_id)
    try:
        request = msgspec.convert(obj, cls)
    except msgspec.ValidationError as exc:
        raise PushRequestError("bad_request", f"invalid {action} request: {exc}", request_id) from None
    if isinstance(request, PairsRequest):
        _check_pairs(request, channels)
    return request


def _check_pairs(request: PairsRequest, channels: frozenset[str]) -> None:
    if not request.channels or not request.symbols:
        raise PushRequestError("bad_request", f"{request.action} needs at least one channel and one symbol", request.id)
    unknown = [channel for channel in request.channels if channel not in channels]
    if unknown:
        raise PushRequestError(
            "unknown_channel",
            f"unknown channel(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(channels))})",
            request.id,
        )
    malformed = [symbol for symbol in request.symbols if not SYMBOL_RE.fullmatch(symbol)]
    if malformed:
        raise PushRequestError(
            "bad_symbol",
            f"malformed symbol(s) {', '.join(map(repr, malformed))}: write exchange.SYMBOL, e.g. binance.BTCUSDT",
            request.id,
        )


# --- what the gateway sends -------------------------------------------------------------------------------


class _Reply(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type"):
    pass


class Subscribed(_Reply, frozen=True, tag="subscribed"):
    channels: list[str]
    symbols: list[str]
    subscriptions: int  # the client's total after this request
    id: str | int | None = None


class Unsubscribed(_Reply, frozen=True, tag="unsubscribed"):
    channels: list[str]
    symbols: list[str]
    subscriptions: int
    id: str | int | None = None


class Pong(_Reply, frozen=True, tag="pong"):
    ts: int  # the gateway's clock, ns since the epoch
    id: str | int | None = None


class ErrorReply(_Reply, frozen=True, tag="error"):
    code: str
    reason: str
    id: str | int | None = None


class Dropped(_Reply, frozen=True, tag="dropped"):
    count: int  # updates this client lost since the previous notice


class Outgoing(NamedTuple):
    """A message for clients, encoded once: its JSON and the whole WebSocket frame that carries it.

    Server frames are not masked, and the gateway negotiates no extension (no compression), so the frame is
    the same bytes for every client and is built once, by websockets' own serializer."""

    payload: bytes
    wire: bytes


def outgoing(payload: bytes) -> Outgoing:
    return Outgoing(payload, Frame(Opcode.TEXT, payload).serialize(mask=False))


_encoder = msgspec.json.Encoder()


def encode_reply(reply: _Reply) -> Outgoing:
    return outgoing(_encoder.encode(reply))


def error_reply(error: PushRequestError) -> Outgoing:
    return encode_reply(ErrorReply(code=error.code, reason=error.reason, id=error.request_id))


def pong_reply(request: Ping) -> Outgoing:
    return encode_reply(Pong(ts=time.time_ns(), id=request.id))


def dropped_notice(count: int) -> Outgoing:
    return encode_reply(Dropped(count=count))


def update_message(channel: str, symbol: str, record: bytes) -> Outgoing:
    """``{"type":"update","channel":...,"symbol":...,"data":<the bus record>}``, built once per update."""
    payload = b"".join(
        (
            b'{"type":"update","channel":',
            _encoder.encode(channel),
            b',"symbol":',
            _encoder.encode(symbol),
            b',"data":',
            record,
            b"}",
        )
    )
    return outgoing(payload)
