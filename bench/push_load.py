"""The load generator of ``bench/push.py``: thousands of WebSocket clients in one process.

A full client library spends more CPU per received message than the gateway spends sending it, and the load
generator shares the two cores with the gateway and Kafka. So each client here is a bare asyncio Protocol
speaking just enough RFC 6455: the HTTP upgrade, masked client frames (subscribe, pong, close), and reading the
gateway's unmasked frames. Per received chunk it reads the clock once; per update it finds the trade's
``recv_ts`` (the publisher's clock at publish time) and adds the delay, in whole milliseconds, to a histogram.

Fast clients read everything; slow ones stop reading (``pause_reading``) once subscribed and reconnect when the
gateway closes them, so the slow share stays constant for the whole run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

HISTOGRAM_MS = 10_000
_RECV_TS = b'"recv_ts":'


@dataclass
class Stats:
    window_ns: tuple[int, int] = (0, 0)  # updates published inside this window are measured
    histogram: list[int] = field(default_factory=lambda: [0] * (HISTOGRAM_MS + 1))  # fast clients, per ms
    fast_updates: int = 0  # fast clients' updates in the window
    slow_updates: int = 0
    fast_dropped: int = 0  # counts from "dropped" notices to fast clients
    fast_clients_with_drops: set[int] = field(default_factory=set)
    closes: Counter[int] = field(default_factory=Counter)  # close codes received, slow and fast
    fast_lost: int = 0  # fast clients that lost their connection
    connect_failures: Counter[str] = field(default_factory=Counter)
    slow_reconnects: int = 0


def _mask(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, ``opcode``, masked ``payload`` (short control and request frames only)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    header = (
        bytes([0x80 | opcode, 0x80 | length]) if length < 126 else bytes([0x80 | opcode, 0xFE]) + length.to_bytes(2)
    )
    return header + key + masked


class BenchClient(asyncio.Protocol):
    def __init__(self, load: Load, index: int, symbols: list[str], slow: bool) -> None:
        self.load, self.index, self.symbols, self.slow = load, index, symbols, slow
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET / HTTP/1.1\r\nHost: {self.load.host}:{self.load.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now_ns = time.time_ns()
        data = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.fail(data[: data.find(b"\r\n")].decode(errors="replace"))
                return
            self.upgraded = True
            request = {"action": "subscribe", "channels": ["trade"], "symbols": self.symbols}
            assert self.transport is not None
            self.transport.write(_mask(0x1, json.dumps(request).encode()))
            data = data[end + 4 :]
        self.buffer = self.frames(data, now_ns)

    def frames(self, data: bytes, now_ns: int) -> bytes:
        """Handles every complete frame in ``data``; returns the incomplete rest."""
        stats, offset, size = self.load.stats, 0, len(data)
        start_ns, end_ns = stats.window_ns
        while size - offset >= 2:
            opcode, length, head = data[offset] & 0x0F, data[offset + 1] & 0x7F, 2
            if length == 126:
                if size - offset < 4:
                    break
                length, head = int.from_bytes(data[offset + 2 : offset + 4]), 4
            elif length == 127:
                if size - offset < 10:
                    break
                length, head = int.from_bytes(data[offset + 2 : offset + 10]), 10
            if size - offset - head < length:
                break
            payload_at = offset + head
            offset = payload_at + length
            if opcode == 0x1 and data.startswith(b'{"type":"update"', payload_at):
                at = data.rfind(_RECV_TS, payload_at, offset) + len(_RECV_TS)
                stop = at
                while 48 <= data[stop] <= 57:
                    stop += 1
                sent_ns = int(data[at:stop])
                if start_ns <= sent_ns < end_ns:
                    if self.slow:
                        stats.slow_updates += 1
                    else:
                        stats.fast_updates += 1
                        stats.histogram[min((now_ns - sent_ns) // 1_000_000, HISTOGRAM_MS)] += 1
            elif opcode == 0x1:
                self.control(json.loads(data[payload_at:offset]))
            elif opcode == 0x9:  # ping: answer, or the gateway's keepalive closes us
                assert self.transport is not None
                self.transport.write(_mask(0xA, data[payload_at:offset]))
            elif opcode == 0x8:
                code = int.from_bytes(data[payload_at : payload_at + 2]) if length >= 2 else 1005
                stats.closes[code] += 1
                assert self.transport is not None
                self.transport.write(_mask(0x8, data[payload_at : payload_at + 2]))
                self.transport.close()
                return b""
        return data[offset:]

    def control(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribed" and not self.subscribed.done():
            self.subscribed.set_result(None)
            if self.slow:
                assert self.transport is not None
                self.transport.pause_reading()
        elif kind == "dropped" and not self.slow:
            self.load.stats.fast_dropped += message["count"]
            self.load.stats.fast_clients_with_drops.add(self.index)
        elif kind == "error":
            self.fail(f"error reply {message}")

    def fail(self, reason: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"connection lost before subscribing: {exc!r}"))
        self.load.lost(self)


class Load:
    def __init__(self, host: str, port: int, source_ips: list[str], symbols: list[str]) -> None:
        self.host, self.port, self.source_ips, self.symbols = host, port, source_ips, symbols
        self.stats = Stats()
        self.clients: set[BenchClient] = set()
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes = asyncio.Semaphore(200)

    async def connect(self, index: int, slow: bool, slow_symbols: int) -> None:
        count = slow_symbols if slow else 1
        symbols = [f"bench.{self.symbols[(index + k) % len(self.symbols)]}" for k in range(count)]
        loop = asyncio.get_running_loop()
        async with self._handshakes:
            try:
                _, client = await loop.create_connection(
                    lambda: BenchClient(self, index, symbols, slow),
                    self.host,
                    self.port,
                    local_addr=(self.source_ips[index % len(self.source_ips)], 0),
                )
                await asyncio.wait_for(client.subscribed, 60)
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.stats.connect_failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                return
        self.clients.add(client)

    def lost(self, client: BenchClient) -> None:
        self.clients.discard(client)
        if self.stopping or not client.subscribed.done() or client.subscribed.exception() is not None:
            return
        if client.slow:  # closed for lagging, as it should be: come back and be slow again
            self.stats.slow_reconnects += 1
            task = asyncio.ensure_future(self._reconnect(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.stats.fast_lost += 1

    async def _reconnect(self, client: BenchClient) -> None:
        await asyncio.sleep(random.uniform(0.5, 1.5))  # float-ok: a delay
        if not self.stopping:
            await self.connect(client.index, True, len(client.symbols))

    async def close_all(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()


async def _tick(tick_s: float) -> None:  # float-ok: seconds
    """Sleeps outside the event loop between rounds: frames arriving meanwhile wait in the socket buffers and
    are all read in the next round, without a wakeup each. Adds up to ``tick_s`` to the measured latency."""
    while True:
        time.sleep(tick_s)  # noqa: ASYNC251 - blocking on purpose, see above
        await asyncio.sleep(0)


def run_clients(
    host: str,
    port: int,
    fast: int,
    slow: int,
    slow_symbols: int,
    symbols: list[str],
    pipe: Connection,
    tick_s: float = 0.005,  # float-ok: seconds
) -> None:
    """The load process: connects, reports, measures the window it is sent, reports the statistics."""

    # The clients share the machine with the gateway, which they would not in production: a load process
    # waiting in epoll is woken by every frame the gateway sends, and on this VM a cross-CPU wakeup costs the
    # sending gateway more than the send itself. So the load process reads in ticks (see ``_tick``), and
    # SCHED_BATCH keeps it from preempting the gateway when it does wake.
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))

    async def main() -> None:
        source_ips = [f"127.0.0.{n}" for n in range(2, 10)]  # 8 x 28k ephemeral ports: never short
        load = Load(host, port, source_ips, symbols)
        ticker = asyncio.ensure_future(_tick(tick_s))
        started = time.monotonic()
        order = list(range(fast + slow))
        await asyncio.gather(*(load.connect(i, i >= fast, slow_symbols) for i in order))
        pipe.send(
            {
                "connected": len(load.clients),
                "seconds": time.monotonic() - started,
                "failures": dict(load.stats.connect_failures),
            }
        )
        loop = asyncio.get_running_loop()
        command = await loop.run_in_executor(None, pipe.recv)
        load.stats.window_ns = tuple(command["window_ns"])  # type: ignore[assignment]
        await loop.run_in_executor(None, pipe.recv)  # "report"
        stats = load.stats
        pipe.send(
            {
                "clients": len(load.clients),
                "histogram": stats.histogram,
                "fast_updates": stats.fast_updates,
                "slow_updates": stats.slow_updates,
                "fast_dropped": stats.fast_dropped,
                "fast_clients_with_drops": len(stats.fast_clients_with_drops),
                "closes": dict(stats.closes),
                "fast_lost": stats.fast_lost,
                "slow_reconnects": stats.slow_reconnects,
                "failures": dict(stats.connect_failures),
            }
        )
        await load.close_all()
        ticker.cancel()

    asyncio.run(main())
