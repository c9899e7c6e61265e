"""The query API's aiohttp application: middlewares (errors as JSON, API keys, rate limits, declared parameters
only) and the handlers of the routes declared in :mod:`market_ingestor.api.spec`.

Every error answer is ``{"error": "...", "parameter": "<name>" | null}``: 400 for an invalid parameter, 401
without a valid key, 404 for an unknown symbol, indicator or route, 429 over the key's rate (with Retry-After),
503 while the database is unavailable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from market_ingestor.api import metrics, panel, render
from market_ingestor.api.catalog import Catalog
from market_ingestor.api.keys import KeyInfo, KeyVerifier
from market_ingestor.api.monitor import PanelMonitor
from market_ingestor.api.params import decode_cursor, parse_choice, parse_limit, time_range
from market_ingestor.api.ratelimit import RateLimiter, retry_after
from market_ingestor.api.spec import Route, openapi_document, routes
from market_ingestor.api.store import Store
from market_ingestor.api.ticker_state import TickerView
from market_ingestor.config import Config
from market_ingestor.errors import RequestError, StorageError
from market_ingestor.ingestor.exchanges import REGISTRY
from market_ingestor.jsontext import JsonEncoder
from market_ingestor.observability.server import metrics_response
from market_ingestor.windows import Interval, parse_interval

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encoder = JsonEncoder()  # Decimals in plain digits: "0.00000000", never "0E-8"


@dataclass
class ApiContext:
    config: Config
    store: Store
    ticker: TickerView
    verifier: KeyVerifier | None  # None: auth disabled
    catalog: Catalog = field(init=False)
    limiter: RateLimiter = field(init=False)
    intervals: dict[str, Interval] = field(init=False)
    routes: dict[str, Route] = field(init=False)
    openapi: bytes = field(init=False)

    def __post_init__(self) -> None:
        api = self.config.api
        self.catalog = Catalog(self.store, self.ticker, api.symbols_refresh_s)
        self.limiter = RateLimiter(api.key_cache_size)
        self.intervals = {name: parse_interval(name) for name in self.config.streams.intervals}
        self.routes = {route.name: route for route in routes(self.config)}
        self.openapi = _encoder.encode(openapi_document(self.config))

    def limit(self, request: web.Request) -> int:
        api = self.config.api
        return parse_limit(request.query.get("limit"), api.default_page_size, api.max_page_size)

    def interval(self, request: web.Request) -> Interval:
        return self.intervals[parse_choice(request.query.get("interval"), self.intervals, "interval", "interval")]

    async def instrument(self, request: web.Request) -> tuple[str, str]:
        exchange = parse_choice(request.match_info["exchange"], REGISTRY, "exchange", "exchange")
        symbol = request.match_info["symbol"].upper()
        await self.catalog.require(exchange, symbol)
        return exchange, symbol


CONTEXT = web.AppKey("context", ApiContext)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, parameter: str | None = None, **headers: str) -> web.Response:
    return json_response({"error": message, "parameter": parameter}, status, headers or None)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    response = await _answer(request, handler)
    elapsed_s = time.perf_counter() - start
    # How long the server took (not the network): what a client or a load balancer can tell from queueing.
    response.headers["Server-Timing"] = f"app;dur={elapsed_s * 1000:.2f}"
    route = request.match_info.route.name or metrics.UNMATCHED
    metrics.REQUESTS.labels(route, str(response.status)).inc()
    metrics.REQUEST_SECONDS.labels(route).observe(elapsed_s)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        challenge = {"WWW-Authenticate": 'Bearer realm="market-ingestor"'} if exc.status == 401 else {}
        return error_response(exc.status, str(exc), exc.parameter, **challenge)
    except StorageError as exc:
        log.warning("query failed: database unavailable", extra={"path": request.path, "reason": str(exc)})
        return error_response(503, str(exc), None, **{"Retry-After": "1"})
    except web.HTTPException as exc:  # aiohttp's own: no such route, method not allowed
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}", None)


@web.middleware
async def keys_and_parameters(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    route = ctx.routes.get(request.match_info.route.name or "")
    if route is None:  # not one of ours (a 404/405 from the router): no key needed to learn that
        return await handler(request)
    if not route.public and ctx.verifier is not None:
        info = await _authenticate(request, ctx.verifier)
        rate = info.rate_limit_per_s or ctx.config.api.rate_limit_per_s
        burst = info.rate_limit_burst or ctx.config.api.rate_limit_burst
        wait_s = ctx.limiter.take(info.id, rate, burst)
        if wait_s:
            message = f"rate limit of key {info.id} exceeded ({rate}/s, burst {burst})"
            return error_response(429, message, None, **{"Retry-After": retry_after(wait_s)})
    for name in request.query:
        if name not in route.query_names:
            expected = ", ".join(sorted(route.query_names)) or "none"
            raise RequestError(f"unknown query parameter {name!r} (this route takes: {expected})", name)
        if len(request.query.getall(name)) > 1:
            raise RequestError(f"query parameter {name!r} is given more than once", name)
    return await handler(request)


async def _authenticate(request: web.Request, verifier: KeyVerifier) -> KeyInfo:
    key = request.headers.get("X-API-Key")
    authorization = request.headers.get("Authorization", "")
    if key is None and authorization[:7].lower() == "bearer ":
        key = authorization[7:].strip()
    if not key:
        raise RequestError("an API key is required: send it as X-API-Key or Authorization: Bearer", None, 401)
    info = await verifier.verify(key)
    if info is None:
        raise RequestError("invalid or revoked API key", None, 401)
    return info


# --- handlers ---------------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        await ctx.store.ping()
        database = "ok"
    except StorageError as exc:
        database = str(exc)
    ticker = "recovered" if ctx.ticker.recovered else "recovering"
    ready = database == "ok" and ctx.ticker.recovered
    return json_response({"ready": ready, "database": database, "ticker": ticker}, 200 if ready else 503)


async def prometheus(request: web.Request) -> web.Response:
    return await metrics_response(request)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CONTEXT].openapi, content_type="application/json")


async def symbols(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    only = request.query.get("exchange")
    if only is not None:
        parse_choice(only, REGISTRY, "exchange", "exchange")
    listed = await ctx.catalog.listing()
    return json_response({"data": [entry for entry in listed if only is None or entry.exchange == only]})


async def ticker(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    exchange, symbol = await ctx.instrument(request)
    return json_response(render.ticker(exchange, symbol, ctx.ticker.get(f"{exchange}.{symbol}")))


async def tickers(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    wanted = _symbol_list(request.query.get("symbols"), ctx.config.api.max_tickers)
    for exchange, symbol in wanted:
        await ctx.catalog.require(exchange, symbol, parameter="symbols")
    data = [render.ticker(ex, sym, ctx.ticker.get(f"{ex}.{sym}")) for ex, sym in wanted]
    return json_response({"data": data})


def _symbol_list(text: str | None, maximum: int) -> list[tuple[str, str]]:
    if not text:
        raise RequestError("symbols is required: comma-separated exchange.SYMBOL pairs", "symbols")
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        exchange, dot, symbol = item.strip().partition(".")
        if not dot or not symbol:
            raise RequestError(f"malformed symbols entry {item!r}: expected exchange.SYMBOL", "symbols")
        if exchange not in REGISTRY:
            raise RequestError(
                f"unknown exchange {exchange!r} in symbols: expected one of {', '.join(REGISTRY)}", "symbols"
            )
        if (exchange, symbol.upper()) not in pairs:
            pairs.append((exchange, symbol.upper()))
    if len(pairs) > maximum:
        raise RequestError(f"too many symbols: {len(pairs)}, at most {maximum}", "symbols")
    return pairs


async def klines(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    interval, window = ctx.interval(request), time_range(request.query.get("from"), request.query.get("to"))
    limit, after = ctx.limit(request), decode_cursor(request.query.get("cursor"), "klines")
    exchange, symbol = await ctx.instrument(request)
    rows = await ctx.store.klines(exchange, symbol, interval.name, window, after, limit + 1)
    return json_response(render.kline_page(exchange, symbol, interval, rows, limit))


async def trades(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    window = time_range(request.query.get("from"), request.query.get("to"))
    limit, after = ctx.limit(request), decode_cursor(request.query.get("cursor"), "trades")
    exchange, symbol = await ctx.instrument(request)
    rows = await ctx.store.trades(exchange, symbol, window, after, limit + 1)
    return json_response(render.trade_page(exchange, symbol, rows, limit))


async def indicators(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    if name not in ctx.config.streams.indicators:
        configured = ", ".join(ctx.config.streams.indicators)
        raise RequestError(f"unknown indicator {name!r}: this service has {configured}", "name", 404)
    interval, window = ctx.interval(request), time_range(request.query.get("from"), request.query.get("to"))
    limit, after = ctx.limit(request), decode_cursor(request.query.get("cursor"), "indicators")
    exchange, symbol = await ctx.instrument(request)
    rows = await ctx.store.indicators(exchange, symbol, interval.name, name, window, after, limit + 1)
    return json_response(render.indicator_page(exchange, symbol, interval.name, name, rows, limit))


HANDLERS: dict[str, Handler] = {
    "healthz": healthz,
    "readyz": readyz,
    "openapi": openapi,
    "metrics": prometheus,
    "symbols": symbols,
    "ticker": ticker,
    "tickers": tickers,
    "klines": klines,
    "trades": trades,
    "indicators": indicators,
    "panel": panel.page,
    "panel_asset": panel.asset,
    "status": panel.status,
    "control_symbols": panel.control_symbols,
    "control_exchanges": panel.control_exchanges,
}


def build_web_app(
    config: Config,
    store: Store,
    ticker_view: TickerView,
    verifier: KeyVerifier | None,
    monitor: PanelMonitor | None = None,
) -> web.Application:
    """The aiohttp app; ``verifier`` None serves without keys (``api.auth_enabled = false``). The caller starts
    and stops ``monitor`` (the control panel's view of the bus); without one the panel shows no live state."""
    app = web.Application(middlewares=[errors_as_json, keys_and_parameters])
    ctx = ApiContext(config, store, ticker_view, verifier if config.api.auth_enabled else None)
    app[CONTEXT] = ctx
    app[panel.PANEL] = panel.Panel(config, monitor or PanelMonitor(config))
    for route in ctx.routes.values():
        app.router.add_route(route.method.upper(), route.path, HANDLERS[route.name], name=route.name)
    return app
