"""The error tree. Every error the package raises on purpose derives from one root.

    MarketIngestorError
    ├── ConfigError            bad config file, field or environment override
    ├── SymbolError            a symbol that no instrument registry knows, or a malformed one
    ├── ParseError             an exchange frame that cannot be normalized (goes to the dead-letter topic)
    │   └── NotNormalized      a well-formed frame the parser turns into no event (a channel or API version it does
    │                          not handle, or one too incomplete for an event): counted, dead-lettered, never silent
    ├── ExchangeError          an exchange endpoint failed (REST status, timeout, refused connection)
    ├── BusError               the transport failed (Kafka, NATS); wraps the client library's error
    │   └── BusClosedError     used after stop() or before start()
    ├── StorageError           the database refused a statement (bad data, schema not migrated)
    │   └── StorageUnavailable the database cannot be reached or went away: retry with backoff
    ├── RetriesExhausted       a retry policy with an end gave up (retry.py); logged naming what gave up
    ├── DevStackError          a local development server failed to start or stop
    ├── RequestError           a bad query API request (parameter, unknown symbol); carries the HTTP status
    ├── PushRequestError       a push client's message that cannot be served (push/protocol.py): an error reply
    ├── BadLine                a line of a `db load` file that is not a storable event (sinks/load.py)
    └── IndicatorError         the indicator maths (indicators/base.py)
        ├── IndicatorSpecError   a spec or parameter that names no valid indicator (also a ValueError)
        ├── IndicatorInputError  a kline an indicator cannot take (also a ValueError)
        └── IndicatorStateError  stored indicator state that does not decode

``tests/test_errors.py`` compares this drawing with the classes that exist.

Library errors are wrapped at the boundary with ``raise ... from exc`` so the cause stays visible, and every
message says what the operator can do about it.
"""

from __future__ import annotations

from typing import Literal


class MarketIngestorError(Exception):
    """Root of all market-ingestor errors."""


class ConfigError(MarketIngestorError):
    """The configuration is invalid; the message names the field path and what was expected."""


class SymbolError(MarketIngestorError):
    """A symbol could not be normalized or is unknown to the instrument registry."""


class ParseError(MarketIngestorError):
    """An exchange frame could not be normalized; carries the reason for the dead-letter record."""


NotNormalizedReason = Literal["unhandled", "incomplete"]
CHANNEL_TEXT_LIMIT = 64


class NotNormalized(ParseError):
    """A well-formed frame that gives no event and is not protocol chatter (each exchange module lists its chatter
    in ``PROTOCOL_CHATTER``).

    ``channel`` names what the frame is in the exchange's terms (``kline_1m``, ``orderBookL2_25``, ``last_match``)
    for per-channel summaries; ``reason`` is one of two words, for bounded metric labels: ``unhandled`` (a channel,
    message type or API version the parser does not read) or ``incomplete`` (a channel it reads, but this frame
    lacks what an event needs, e.g. a ticker without sizes). ``channel`` comes from the frame, so it is cut to
    :data:`CHANNEL_TEXT_LIMIT` characters."""

    def __init__(self, exchange: str, channel: str, reason: NotNormalizedReason, detail: str = "") -> None:
        channel = channel[:CHANNEL_TEXT_LIMIT]
        self.exchange, self.channel, self.reason = exchange, channel, reason
        self.detail = detail or (
            "a channel or message type the parser does not handle" if reason == "unhandled" else "incomplete frame"
        )
        super().__init__(f"{exchange} {channel}: not normalized: {self.detail}")


class ExchangeError(MarketIngestorError):
    """An exchange's REST or WebSocket endpoint failed; the message names the URL."""


class BusError(MarketIngestorError):
    """The message bus failed; the cause is chained."""


class BusClosedError(BusError):
    """The bus client was used before start() or after stop()."""


class StorageError(MarketIngestorError):
    """The database refused a write or query; retrying the same statement will fail again. Cause chained."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or the connection broke; the same write may succeed later."""


class RetriesExhausted(MarketIngestorError):
    """A loop whose retry policy ends (``RetryPolicy.give_up_after``) gave up; the message names the loop."""


class DevStackError(MarketIngestorError):
    """A development server (Kafka, PostgreSQL, NATS) could not be started or stopped."""


class RequestError(MarketIngestorError):
    """A query API request that cannot be answered as asked: the HTTP status and the parameter to blame."""

    def __init__(self, message: str, parameter: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.status = status


def ours_in(group: BaseExceptionGroup[BaseException]) -> MarketIngestorError | None:
    """The first of our errors in a task group's ``ExceptionGroup``, for a service to report plainly (``raise ours
    from group``) instead of the group; None when the group holds none of ours."""
    return next((error for error in group.exceptions if isinstance(error, MarketIngestorError)), None)
