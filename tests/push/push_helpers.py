"""Events, configs, a publisher and WebSocket client helpers for the push gateway tests."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from market_ingestor.bus import Publisher
from market_ingestor.bus.keys import bus_key, event_id
from market_ingestor.bus.topics import topic_of
from market_ingestor.config import BusConfig, Config, KafkaConfig, NatsConfig, PushConfig, StreamsConfig
from market_ingestor.devstack import StackInfo
from market_ingestor.model import AnyEvent, IndicatorValue, Kline, Quote, Trade, decode, encode

MINUTE_NS = 60 * 1_000_000_000
T0 = 1_700_000_040 * 1_000_000_000  # a minute boundary


def unique_symbol() -> str:
    return f"T{uuid.uuid4().hex[:8].upper()}USDT"


def make_config(stack: StackInfo, kind: str = "kafka", **push: Any) -> Config:
    return Config(
        bus=BusConfig(
            kind=kind,  # type: ignore[arg-type]
            topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
            kafka=KafkaConfig(bootstrap=stack.kafka_bootstrap, partitions=2, linger_ms=1),
            nats=NatsConfig(url=stack.nats_url, storage="memory"),
        ),
        streams=StreamsConfig(intervals=["1m", "5m"], indicators=["rsi_14", "macd_12_26_9"]),
        push=PushConfig(**{"host": "127.0.0.1", "port": 0, **push}),
    )


def trade(symbol: str, n: int, exchange: str = "binance") -> Trade:
    return Trade(exchange, symbol, str(n), Decimal("100.5") + n, Decimal("0.001"), "buy", T0 + n, T0 + n + 1)


def quote(symbol: str, n: int) -> Quote:
    price = Decimal("100.00") + Decimal(n) / 100
    return Quote("binance", symbol, price, Decimal("1.5"), price + Decimal("0.01"), Decimal("2"), T0 + n, T0 + n)


def kline(symbol: str, interval: str = "1m", minute: int = 0, closed: bool = False, trades: int = 3) -> Kline:
    open_time = T0 + minute * MINUTE_NS
    return Kline(
        "binance",
        symbol,
        interval,
        open_time,
        open_time + MINUTE_NS - 1,
        Decimal("100.00"),
        Decimal("101.50"),
        Decimal("99.25"),
        Decimal("100.75"),
        Decimal("3.000"),
        Decimal("302.25"),
        trades,
        Decimal("1.000"),
        Decimal("100.75"),
        "1",
        str(trades),
        Decimal("100.75"),
        closed,
    )


def indicator(symbol: str, minute: int = 0, value: str = "55.5") -> IndicatorValue:
    return IndicatorValue("binance", symbol, "1m", "rsi_14", T0 + minute * MINUTE_NS, {"value": Decimal(value)})


async def publish(publisher: Publisher, prefix: str, *events: AnyEvent) -> None:
    for event in events:
        await publisher.publish(prefix + topic_of(event), bus_key(event), encode(event), event_id(event))
    await publisher.flush()


async def wait_for(
    condition: Callable[[], object],
    timeout_s: float = 15.0,  # float-ok: seconds
    what: str = "condition",
) -> None:
    """Polls ``condition`` until it is true, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def open_client(port: int, *, path: str = "/", small_receive_buffer: bool = False, **kwargs: Any) -> Any:
    """A websockets client; with ``small_receive_buffer`` its kernel buffer is tiny, so a client that stops
    reading backs up to the gateway after a few dozen frames instead of megabytes."""
    if small_receive_buffer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        kwargs.update(sock=sock, max_queue=1)
    return connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10, **kwargs)


async def recv_json(ws: ClientConnection, timeout_s: float = 15.0) -> dict[str, Any]:  # float-ok: seconds
    message = await asyncio.wait_for(ws.recv(), timeout_s)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def request(ws: ClientConnection, **body: Any) -> dict[str, Any]:
    await ws.send(json.dumps(body))
    return await recv_json(ws)


def event_of(message: dict[str, Any]) -> AnyEvent:
    """The event an update carries, decoded as the model's type."""
    assert message["type"] == "update", message
    return decode(json.dumps(message["data"]))
