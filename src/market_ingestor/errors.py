"""The error tree. Every error the package raises on purpose derives from one root.

    MarketIngestorError
    ├── ConfigError            bad config file, field or environment override
    ├── SymbolError            a symbol that no instrument registry knows, or a malformed one
    ├── ParseError             an exchange frame that cannot be normalized (goes to the dead-letter topic)
    ├── ExchangeError          an exchange endpoint failed (REST status, timeout, refused connection)
    ├── BusError               the transport failed (Kafka, NATS); wraps the client library's error
    │   └── BusClosedError     used after stop() or before start()
    ├── StorageError           the database refused a statement (bad data, schema not migrated)
    │   └── StorageUnavailable the database cannot be reached or went away: retry with backoff
    ├── DevStackError          a local development server failed to start or stop
    ├── RequestError           a bad query API request (parameter, unknown symbol); carries the HTTP status
    └── PushRequestError       a push client's message that cannot be served (push/protocol.py): an error reply

Library errors are wrapped at the boundary with ``raise ... from exc`` so the cause stays visible, and every
message says what the operator can do about it.
"""


class MarketIngestorError(Exception):
    """Root of all market-ingestor errors."""


class ConfigError(MarketIngestorError):
    """The configuration is invalid; the message names the field path and what was expected."""


class SymbolError(MarketIngestorError):
    """A symbol could not be normalized or is unknown to the instrument registry."""


class ParseError(MarketIngestorError):
    """An exchange frame could not be normalized; carries the reason for the dead-letter record."""


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


class DevStackError(MarketIngestorError):
    """A development server (Kafka, PostgreSQL, NATS) could not be started or stopped."""


class RequestError(MarketIngestorError):
    """A query API request that cannot be answered as asked: the HTTP status and the parameter to blame."""

    def __init__(self, message: str, parameter: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.status = status
