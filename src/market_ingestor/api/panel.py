"""The control panel's routes: the page and its two files (package data in ``api/static/``, served from memory,
no build step, nothing from the internet), the state it polls (``GET /api/v1/status``) and the commands it sends
(``POST /api/v1/control/symbols`` and ``/exchanges``). The live chart needs nothing from here: the page talks to
the push gateway itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Literal, TypeVar

import msgspec
from aiohttp import web

from market_ingestor.api.monitor import ExchangeView, PanelMonitor
from market_ingestor.api.spec import PANEL_ASSETS
from market_ingestor.config import Config
from market_ingestor.errors import BusError, RequestError, SymbolError
from market_ingestor.ingestor.control import check_exchange, check_symbol, command
from market_ingestor.jsontext import JsonEncoder
from market_ingestor.model import ControlCommand

T = TypeVar("T")
MAX_BODY_BYTES = 4096
_encoder = JsonEncoder()
_FIELD = re.compile(r"at `\$\.(\w+)`|field `(\w+)`")  # msgspec's "... - at `$.symbol`", "missing ... field `x`"


class SymbolRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: Literal["add", "remove"]
    exchange: str
    symbol: str


class ExchangeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: Literal["add", "remove"]
    exchange: str


class Panel:
    """The panel's files and its monitor, held by the web app."""

    def __init__(self, config: Config, monitor: PanelMonitor) -> None:
        self.config = config
        self.monitor = monitor
        files = resources.files("market_ingestor.api") / "static"
        self.page = (files / "index.html").read_bytes()
        self.assets = {name: ((files / name).read_bytes(), media) for name, media in PANEL_ASSETS.items()}


PANEL = web.AppKey("panel", Panel)
_NO_CACHE = {"Cache-Control": "no-cache"}  # a new version of the page is picked up at the next load


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")


async def page(request: web.Request) -> web.Response:
    return web.Response(body=request.app[PANEL].page, content_type="text/html", headers=_NO_CACHE)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    found = request.app[PANEL].assets.get(name)
    if found is None:
        raise RequestError(f"no such file {name!r}: the panel has {', '.join(PANEL_ASSETS)}", "asset", 404)
    body, media = found
    return web.Response(body=body, content_type=media, charset="utf-8", headers=_NO_CACHE)


async def status(request: web.Request) -> web.Response:
    panel = request.app[PANEL]
    config, monitor = panel.config, panel.monitor
    return _json(
        {
            "time_ms": time.time_ns() // 1_000_000,
            "exchanges": monitor.exchanges(),
            "connectors": monitor.connectors(),
            "throughput": monitor.throughput(),
            "lag": monitor.lag(),
            "push": {
                "url": config.api.panel_push_url or None,
                "port": config.push.port,
                "auth": config.push.auth_enabled,
            },
            "intervals": config.streams.intervals,
            "errors": monitor.problems(),
        }
    )


async def control_symbols(request: web.Request) -> web.Response:
    body = await _body(request, SymbolRequest)
    _checked(check_exchange, body.exchange, "exchange")
    _checked(check_symbol, body.symbol, "symbol")
    return await _send(request, command(body.action, "symbol", body.exchange, body.symbol))


async def control_exchanges(request: web.Request) -> web.Response:
    body = await _body(request, ExchangeRequest)
    _checked(check_exchange, body.exchange, "exchange")
    return await _send(request, command(body.action, "exchange", body.exchange))


def _checked(check: Callable[[str], str], value: str, parameter: str) -> None:
    try:
        check(value)
    except SymbolError as exc:
        raise RequestError(str(exc), parameter) from None


async def _body(request: web.Request, cls: type[T]) -> T:
    # Only JSON: a browser sends a cross-site JSON POST only after a CORS preflight, which this server never
    # grants, so another web page cannot send commands through a visitor's browser (the "simple" form and
    # text/plain bodies it could send are refused here).
    if request.content_type != "application/json":
        raise RequestError(
            f"send the command as JSON (Content-Type: application/json, not {request.content_type})", None, 415
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", None)
    data = await request.content.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", None)
    try:
        return msgspec.json.decode(data, type=cls)
    except msgspec.ValidationError as exc:
        match = _FIELD.search(str(exc))
        field = (match.group(1) or match.group(2)) if match else None
        raise RequestError(f"invalid request body: {exc}", field) from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"request body is not JSON: {exc}", None) from None


async def _send(request: web.Request, cmd: ControlCommand) -> web.Response:
    monitor = request.app[PANEL].monitor
    try:
        applied = await monitor.send(cmd)
    except BusError as exc:
        raise RequestError(f"the command could not be sent: {exc}", None, 503) from exc
    state = next(view for view in monitor.exchanges() if view.exchange == cmd.exchange)
    if not applied:  # sent, not read back yet: show the state it will have
        state = _expected(state, cmd)
    target = {"action": cmd.action, "target": cmd.target, "exchange": cmd.exchange, "symbol": cmd.symbol}
    return _json({"command": target, "applied": applied, "state": state})


def _expected(view: ExchangeView, cmd: ControlCommand) -> ExchangeView:
    if cmd.target == "exchange":
        return ExchangeView(view.exchange, cmd.action == "add", view.symbols)
    symbols = set(view.symbols) | {cmd.symbol} if cmd.action == "add" else set(view.symbols) - {cmd.symbol}
    return ExchangeView(view.exchange, view.enabled, sorted(s for s in symbols if s))
