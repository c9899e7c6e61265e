"""The chaos run's users: WebSocket clients of the push gateway that keep the latest klines and indicator values
they were sent (reconnecting when the gateway dies), and reads of the query API; checked at the end against
the stored klines and against the indicators computed offline over them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from chaos_accounting import KLINE_FIELDS, KlineKey, KlineValues
from market_ingestor.indicators import compute
from market_ingestor.model import Kline

IndicatorKey = tuple[str, str, str, str, int]  # exchange, symbol, interval, name, open_time
IndicatorValues = dict[str, Decimal]
_IDS = ("first_trade_id", "last_trade_id")


def kline_values(data: dict[str, Any]) -> KlineValues:
    """A kline's KLINE_FIELDS from its JSON (bus, push or API): Decimal strings as Decimals."""
    return tuple(
        data[f] if f in _IDS or f == "trade_count" or data[f] is None else Decimal(data[f]) for f in KLINE_FIELDS
    )


@dataclass
class PushState:
    """One client's latest view: per kline window the update with the highest (closed, revision), per indicator
    value the highest revision."""

    klines: dict[KlineKey, tuple[bool, int, KlineValues]] = field(default_factory=dict)
    indicators: dict[IndicatorKey, tuple[int, IndicatorValues]] = field(default_factory=dict)

    def take(self, data: dict[str, Any]) -> None:
        if data["type"] == "kline":
            key = (data["exchange"], data["symbol"], data["interval"], data["open_time"])
            seen = self.klines.get(key)
            if seen is None or (data["closed"], data["revision"]) >= seen[:2]:
                self.klines[key] = (data["closed"], data["revision"], kline_values(data))
        elif data["type"] == "indicator":
            ikey = (data["exchange"], data["symbol"], data["interval"], data["name"], data["open_time"])
            revision = data.get("revision", 0)
            if ikey not in self.indicators or revision >= self.indicators[ikey][0]:
                values = {name: Decimal(value) for name, value in data["values"].items()}
                self.indicators[ikey] = (revision, values)


class Updates:
    """Tells waiters that some client took an update."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._event.clear()
            await self._event.wait()


class PushClient:
    """Subscribes to the klines and indicators of ``symbols``; reconnects (and subscribes again) until stopped."""

    def __init__(self, port: int, channels: list[str], symbols: list[str], updates: Updates) -> None:
        self.url = f"ws://127.0.0.1:{port}/"
        self.request = json.dumps({"action": "subscribe", "channels": channels, "symbols": symbols})
        self.updates = updates
        self.state = PushState()
        self.last_update = 0.0  # monotonic time of the latest update
        self.connections = 0
        self.errors: list[str] = []
        self.created = time.monotonic()  # errors say when they came, to line them up with the faults

    async def run(self) -> None:
        while True:
            try:
                async with connect(self.url, open_timeout=5, max_queue=None) as ws:
                    self.connections += 1
                    await ws.send(self.request)
                    async for message in ws:
                        self._take(json.loads(message))
            except (OSError, TimeoutError, WebSocketException):
                await asyncio.sleep(0.5)  # the gateway is down or restarting

    def _take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "update":
            self.state.take(message["data"])
            self.last_update = time.monotonic()
            self.updates.notify()
        elif kind in ("error", "dropped"):
            self.errors.append(f"at {time.monotonic() - self.created:.1f} s: {json.dumps(message)}")


@dataclass
class ClientAccount:
    klines_checked: int = 0  # closed klines held by the clients, compared with the stored ones
    indicators_checked: int = 0  # values held by the clients or served by the API, compared with the offline ones
    wrong: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.wrong


def check_push_klines(
    account: ClientAccount,
    client: int,
    state: PushState,
    stored: dict[KlineKey, tuple[bool, KlineValues]],
) -> None:
    """Every closed kline the client holds equals the stored one, and so does its latest kline per instrument
    (in progress or closed): its final state is the stored state."""
    latest: dict[tuple[str, str, str], KlineKey] = {}
    for key, (closed, _, values) in state.klines.items():
        series = key[:3]
        if series not in latest or key[3] > latest[series][3]:
            latest[series] = key
        if closed:
            account.klines_checked += 1
            if stored.get(key) != (True, values):
                account.wrong.append(f"push client {client}: closed {key}: {values} != stored {stored.get(key)}")
    for key in latest.values():
        closed, _, values = state.klines[key]
        if not closed and stored.get(key) != (False, values):
            account.wrong.append(f"push client {client}: latest {key}: {values} != stored {stored.get(key)}")


def offline_indicators(
    closed: dict[KlineKey, KlineValues], specs: Iterable[str]
) -> dict[IndicatorKey, IndicatorValues]:
    """Each indicator computed by the pure code over the final closed klines of each series, in time order."""
    series: dict[tuple[str, str, str], list[Kline]] = {}
    for (exchange, symbol, interval, open_time), values in sorted(closed.items()):
        fields = dict(zip(KLINE_FIELDS, values, strict=True))
        series.setdefault((exchange, symbol, interval), []).append(
            Kline(exchange, symbol, interval, open_time, open_time, closed=True, **fields)  # type: ignore[arg-type]
        )
    result: dict[IndicatorKey, IndicatorValues] = {}
    for spec in specs:
        for klines in series.values():
            for value in compute(spec, klines):
                result[(value.exchange, value.symbol, value.interval, value.name, value.open_time)] = value.values
    return result


def check_indicators(
    account: ClientAccount,
    source: str,
    got: dict[IndicatorKey, IndicatorValues],
    offline: dict[IndicatorKey, IndicatorValues],
) -> None:
    """Values ``got`` (a push client's, the API's) equal the offline ones at each of their open times."""
    for key, values in sorted(got.items()):
        account.indicators_checked += 1
        if offline.get(key) != values:
            account.wrong.append(f"{source}: indicator {key}: {values} != offline {offline.get(key)}")


class ApiReader:
    """Reads klines and indicator values back from ``market-ingestor api`` (keys off), every page."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"

    async def _pages(self, session: aiohttp.ClientSession, path: str, interval: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        params = {"interval": interval, "from": "0", "to": str(time.time_ns() // 1_000_000 + 3_600_000)}
        while True:
            async with session.get(f"{self.base}/{path}", params=params) as response:
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status} {await response.text()}")
                page = await response.json(loads=json.loads)
            rows += page["data"]
            if not page["next"]:
                return rows
            params["cursor"] = page["next"]

    async def klines(self, exchange: str, symbol: str, interval: str) -> dict[KlineKey, tuple[bool, KlineValues]]:
        async with aiohttp.ClientSession() as session:
            rows = await self._pages(session, f"klines/{exchange}/{symbol}", interval)
        return {
            (exchange, symbol, interval, r["open_time_ms"] * 1_000_000): (r["closed"], kline_values(r)) for r in rows
        }

    async def indicators(
        self, name: str, exchange: str, symbol: str, interval: str
    ) -> dict[IndicatorKey, IndicatorValues]:
        async with aiohttp.ClientSession() as session:
            rows = await self._pages(session, f"indicators/{name}/{exchange}/{symbol}", interval)
        return {
            (exchange, symbol, interval, name, r["open_time_ms"] * 1_000_000): {
                k: Decimal(str(v)) for k, v in r["values"].items()
            }
            for r in rows
        }
