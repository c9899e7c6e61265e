"""The query API's routes and their parameters, declared once: the web app registers these routes, refuses query
parameters a route does not declare, and ``/openapi.json`` is generated from the same declarations, so the
document cannot drift from what the server accepts. Value sets (intervals, exchanges, indicators, the page
size) come from the configuration the server runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from market_ingestor import __version__
from market_ingestor.config import Config
from market_ingestor.ingestor.exchanges import REGISTRY


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: Literal["path", "query"]
    description: str
    schema: dict[str, Any]
    required: bool = False
    example: str | None = None  # a valid value, used by the docs and by the document's own test


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    name: str  # the aiohttp route name and the OpenAPI operationId
    summary: str
    response: str  # the component schema of a 200 answer
    params: tuple[Param, ...] = ()
    public: bool = False  # no API key needed
    errors: tuple[int, ...] = ()  # statuses besides 200 (and 401/429 on keyed routes)
    description: str = ""
    method: Literal["get", "post"] = "get"
    body: str | None = None  # the component schema of a JSON request body
    media: tuple[str, ...] = ("application/json",)  # what a 200 answer is; other than JSON: ``response`` is ""
    query_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "query_names", frozenset(p.name for p in self.params if p.where == "query"))


TIME_DOC = "RFC 3339 with an offset (2024-03-01T12:00:00Z, fractions up to nanoseconds) or integer epoch milliseconds"


def routes(config: Config) -> tuple[Route, ...]:
    api, intervals = config.api, config.streams.intervals
    exchange = Param(
        "exchange", "path", "Exchange name.", {"type": "string", "enum": sorted(REGISTRY)}, True, "binance"
    )
    symbol = Param(
        "symbol", "path", "Normalized symbol (BASEQUOTE, e.g. BTCUSDT).", {"type": "string"}, True, "BTCUSDT"
    )
    interval = Param(
        "interval", "query", "Kline interval.", {"type": "string", "enum": list(intervals)}, True, intervals[0]
    )
    start = Param("from", "query", f"Start, inclusive: {TIME_DOC}.", _TIME_PARAM, example="2024-03-01T00:00:00Z")
    end = Param("to", "query", f"End, exclusive: {TIME_DOC}.", _TIME_PARAM, example="1709337600000")
    limit = Param(
        "limit",
        "query",
        f"Rows per page (default {min(api.default_page_size, api.max_page_size)}).",
        {"type": "integer", "minimum": 1, "maximum": api.max_page_size},
        example="100",
    )
    cursor = Param(
        "cursor", "query", "The `next` value of the previous page, with the same other parameters.", {"type": "string"}
    )
    indicator = Param(
        "name",
        "path",
        "Indicator name.",
        {"type": "string", "enum": list(config.streams.indicators)},
        True,
        config.streams.indicators[0] if config.streams.indicators else None,
    )
    series = (start, end, limit, cursor)
    bad = (400, 404, 503)
    return (
        Route("/healthz", "healthz", "The process is alive.", "Health", public=True),
        Route(
            "/readyz",
            "readyz",
            "The database answers and the live ticker is recovered (holds what was current at start).",
            "Ready",
            public=True,
            errors=(503,),
        ),
        Route("/openapi.json", "openapi", "This document.", "OpenApi", public=True),
        Route(
            "/metrics",
            "metrics",
            "Prometheus metrics of this process (text exposition format).",
            "",
            public=True,
            media=("text/plain",),
        ),
        Route(
            "/api/v1/symbols",
            "symbols",
            "Instruments with stored data or a live ticker.",
            "SymbolList",
            (
                Param(
                    "exchange",
                    "query",
                    "Only this exchange.",
                    {"type": "string", "enum": sorted(REGISTRY)},
                    example="binance",
                ),
            ),
            errors=(400, 503),
        ),
        Route(
            "/api/v1/ticker/{exchange}/{symbol}",
            "ticker",
            "Latest trade and best bid/ask (live, not from the database).",
            "Ticker",
            (exchange, symbol),
            errors=bad,
        ),
        Route(
            "/api/v1/tickers",
            "tickers",
            "Several tickers at once.",
            "TickerList",
            (
                Param(
                    "symbols",
                    "query",
                    f"Comma-separated exchange.SYMBOL pairs, at most {api.max_tickers}.",
                    {"type": "string"},
                    True,
                    "binance.BTCUSDT,okx.ETHUSDT",
                ),
            ),
            errors=bad,
        ),
        Route(
            "/api/v1/klines/{exchange}/{symbol}",
            "klines",
            "Klines in open-time order.",
            "KlinePage",
            (exchange, symbol, interval, *series),
            errors=bad,
        ),
        Route(
            "/api/v1/trades/{exchange}/{symbol}",
            "trades",
            "Trades in (time, trade id) order.",
            "TradePage",
            (exchange, symbol, *series),
            errors=bad,
        ),
        Route(
            "/api/v1/indicators/{name}/{exchange}/{symbol}",
            "indicators",
            "Indicator values in open-time order.",
            "IndicatorPage",
            (indicator, exchange, symbol, interval, *series),
            errors=bad,
        ),
        *panel_routes(),
    )


def panel_routes() -> tuple[Route, ...]:
    """The control panel: its page, the page's files, the state it shows and the commands it sends."""
    asset = Param(
        "asset", "path", "A file of the page.", {"type": "string", "enum": list(PANEL_ASSETS)}, True, "panel.js"
    )
    return (
        Route("/panel/", "panel", "The control panel (an HTML page).", "", public=True, media=("text/html",)),
        Route(
            "/panel/{asset}",
            "panel_asset",
            "The control panel's script and style sheet.",
            "",
            (asset,),
            public=True,
            errors=(404,),
            media=tuple(sorted(set(PANEL_ASSETS.values()))),
        ),
        Route(
            "/api/v1/status",
            "status",
            "Connectors, subscriptions, throughput per stage and consumer lag (what the control panel shows).",
            "PanelStatus",
            errors=(400,),
        ),
        Route(
            "/api/v1/control/symbols",
            "control_symbols",
            "Add or remove a symbol of an exchange through the control topic; running ingestors apply it live.",
            "ControlResult",
            errors=(400, 415, 503),
            method="post",
            body="SymbolCommand",
        ),
        Route(
            "/api/v1/control/exchanges",
            "control_exchanges",
            "Enable or disable an exchange through the control topic (its symbols are kept).",
            "ControlResult",
            errors=(400, 415, 503),
            method="post",
            body="ExchangeCommand",
        ),
    )


# The panel's files (package data in market_ingestor/api/panel/) and their media types.
PANEL_ASSETS: dict[str, str] = {"panel.js": "text/javascript", "panel.css": "text/css"}


_TIME_PARAM: dict[str, Any] = {
    "oneOf": [{"type": "string", "format": "date-time"}, {"type": "string", "pattern": "^-?[0-9]{1,16}$"}]
}
_DECIMAL = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "description": "An exact decimal number."}
_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339 UTC, nine fractional digits."}
_MS = {"type": "integer", "description": "Epoch milliseconds."}
_STR = {"type": "string"}
_INT = {"type": "integer"}


def _obj(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def _page(item: str, *series: str) -> dict[str, Any]:
    head = {name: _STR for name in ("exchange", "symbol", *series)}
    return _obj({**head, "data": {"type": "array", "items": _ref(item)}, "next": _nullable(_STR)})


_NUM = {"type": "number"}
_ACTION = {"enum": ["add", "remove"]}
PANEL_SCHEMAS: dict[str, Any] = {
    "ExchangeState": _obj(
        {"exchange": _STR, "enabled": {"type": "boolean"}, "symbols": {"type": "array", "items": _STR}}
    ),
    "Connector": _obj(
        {
            "instance": _STR,
            "exchange": _STR,
            "state": {"enum": ["starting", "idle", "connected", "degraded", "disconnected", "stopped"]},
            "stale": {"type": "boolean", "description": "No report for three intervals: the last state known."},
            "report_age_s": _NUM,
            "connections": _INT,
            "connected": _INT,
            "reconnects": _INT,
            "last_message_age_s": _nullable(_NUM),
            "frames_per_s": _nullable(_NUM),
            "events_per_s": _nullable(_NUM),
            "symbols": {"type": "array", "items": _STR},
        }
    ),
    "Throughput": _obj(
        {"stage": _STR, "direction": {"enum": ["in", "out"]}, "topic": _STR, "per_s": _NUM},
    ),
    "PartitionLag": _obj({"partition": _INT, "end": _INT, "committed": _INT, "lag": _INT}),
    "Lag": _obj(
        {
            "stage": _STR,
            "group": _STR,
            "topic": _STR,
            "lag": _INT,
            "partitions": {"type": "array", "items": _ref("PartitionLag")},
        }
    ),
    "PanelStatus": _obj(
        {
            "time_ms": _MS,
            "exchanges": {"type": "array", "items": _ref("ExchangeState")},
            "connectors": {"type": "array", "items": _ref("Connector")},
            "throughput": {"type": "array", "items": _ref("Throughput")},
            "lag": {"type": "array", "items": _ref("Lag")},
            "push": _obj({"url": _nullable(_STR), "port": _INT, "auth": {"type": "boolean"}}),
            "intervals": {"type": "array", "items": _STR},
            "errors": {"type": "array", "items": _STR, "description": "What the API could not read just now."},
        }
    ),
    "SymbolCommand": _obj({"action": _ACTION, "exchange": _STR, "symbol": _STR}),
    "ExchangeCommand": _obj({"action": _ACTION, "exchange": _STR}),
    "ControlResult": _obj(
        {
            "command": _obj(
                {
                    "action": _ACTION,
                    "target": {"enum": ["exchange", "symbol"]},
                    "exchange": _STR,
                    "symbol": _nullable(_STR),
                }
            ),
            "applied": {
                "type": "boolean",
                "description": "This API has read the command back from the control topic (else: sent, not seen yet).",
            },
            "state": _ref("ExchangeState"),
        }
    ),
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _STR, "parameter": _nullable(_STR)}),
    "Health": _obj({"status": {"const": "ok"}}),
    "Ready": _obj({"ready": {"type": "boolean"}, "database": _STR, "ticker": _STR}),
    "OpenApi": {"type": "object"},
    "Symbol": _obj(
        {"exchange": _STR, "symbol": _STR, "id": _STR, "stored": {"type": "boolean"}, "live": {"type": "boolean"}}
    ),
    "SymbolList": _obj({"data": {"type": "array", "items": _ref("Symbol")}}),
    "LastTrade": _obj(
        {
            "trade_id": _STR,
            "price": _DECIMAL,
            "qty": _DECIMAL,
            "side": {"enum": ["buy", "sell"]},
            "time": _TIME,
            "time_ms": _MS,
        }
    ),
    "BestQuote": _obj(
        {
            "bid_price": _DECIMAL,
            "bid_qty": _DECIMAL,
            "ask_price": _DECIMAL,
            "ask_qty": _DECIMAL,
            "time": _TIME,
            "time_ms": _MS,
        }
    ),
    "Ticker": _obj(
        {
            "exchange": _STR,
            "symbol": _STR,
            "last_trade": _nullable(_ref("LastTrade")),
            "quote": _nullable(_ref("BestQuote")),
        }
    ),
    "TickerList": _obj({"data": {"type": "array", "items": _ref("Ticker")}}),
    "Kline": _obj(
        {
            "open_time": _TIME,
            "open_time_ms": _MS,
            "close_time": _TIME,
            "close_time_ms": _MS,
            "open": _DECIMAL,
            "high": _DECIMAL,
            "low": _DECIMAL,
            "close": _DECIMAL,
            "volume": _DECIMAL,
            "quote_volume": _DECIMAL,
            "trade_count": _INT,
            "taker_buy_volume": _DECIMAL,
            "taker_buy_quote_volume": _DECIMAL,
            "first_trade_id": _nullable(_STR),
            "last_trade_id": _nullable(_STR),
            "vwap": _DECIMAL,
            "closed": {"type": "boolean"},
            "revision": _INT,
        }
    ),
    "KlinePage": _page("Kline", "interval"),
    "Trade": _obj(
        {
            "trade_id": _STR,
            "time": _TIME,
            "time_ms": _MS,
            "price": _DECIMAL,
            "qty": _DECIMAL,
            "side": {"enum": ["buy", "sell"]},
        }
    ),
    "TradePage": _page("Trade"),
    "IndicatorValue": _obj(
        {
            "open_time": _TIME,
            "open_time_ms": _MS,
            "values": {"type": "object", "additionalProperties": _DECIMAL},
            "revision": _INT,
        }
    ),
    "IndicatorPage": _page("IndicatorValue", "interval", "name"),
    **PANEL_SCHEMAS,
}

_STATUS_TEXT = {
    200: "OK",
    400: "A parameter is invalid; `parameter` names it.",
    401: "No valid API key.",
    404: "Unknown symbol, indicator or file; `parameter` names it.",
    415: "The request body is not sent as application/json.",
    429: "Rate limit of the key exceeded; see Retry-After.",
    503: "The database (or, for control commands, the bus) is unavailable; for /readyz: not ready.",
}


def _operation(route: Route, auth: bool) -> dict[str, Any]:
    content = {media: {"schema": _ref(route.response) if route.response else _STR} for media in route.media}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    statuses = list(route.errors) + ([401, 429] if auth and not route.public else [])
    for status in sorted(statuses):
        schema = _ref("Ready") if route.name == "readyz" else _ref("Error")
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": schema}},
        }
        if status == 429:
            responses["429"]["headers"] = {"Retry-After": {"schema": _INT, "description": "Seconds to wait."}}
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "parameters": [
            {"name": p.name, "in": p.where, "required": p.required, "description": p.description, "schema": p.schema}
            | ({"example": p.example} if p.example is not None else {})
            for p in route.params
        ],
        "responses": responses,
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    if route.public or not auth:
        operation["security"] = []
    return operation


def _paths(declared: tuple[Route, ...], auth: bool) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in declared:
        paths.setdefault(route.path, {})[route.method] = _operation(route, auth)
    return paths


def openapi_document(config: Config) -> dict[str, Any]:
    auth = config.api.auth_enabled
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "market-ingestor query API",
            "version": __version__,
            "description": (
                "Stored klines, trades and indicator values, and a live ticker. Prices and amounts are exact decimal "
                "strings. Times: requests take " + TIME_DOC + "; responses give RFC 3339 UTC and epoch milliseconds. "
                "Pages: repeat a request with cursor=<next> until next is null."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": _paths(routes(config), auth),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}] if auth else [],
    }
