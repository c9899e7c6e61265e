"""The load generator of ``bench/push.py``: thousands of WebSocket clients in one process.

A client library (or even asyncio's per-socket callbacks) costs more CPU per received message than the gateway
spends sending it, and this process shares the two cores with the gateway and Kafka. So the clients are plain
non-blocking sockets on one ``epoll``, speaking just enough RFC 6455: the HTTP upgrade, masked client frames
(subscribe, pong, close) and the gateway's unmasked frames. The loop reads in ticks: it takes every ready
socket, then sleeps ``tick_s``, so frames arriving meanwhile wait in the socket buffers instead of waking the
process once each (on this VM such a wakeup costs the *sending* gateway more than its send). The tick adds up to
``tick_s`` to the measured latency, which is therefore pessimistic.

Per update it finds the trade's ``recv_ts`` (the publisher's clock at publish time) and adds the delay, in whole
milliseconds, to a histogram. Fast clients read everything; slow ones stop reading once subscribed and reconnect
when the gateway closes them, so the slow share stays constant for the whole run.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import select
import socket
import time
from collections import Counter, deque
from multiprocessing.connection import Connection
from typing import Any

HISTOGRAM_MS = 10_000
_RECV_TS = b'"recv_ts":'
_UPDATE = b'{"type":"update"'
_HANDSHAKES_IN_FLIGHT = 200
CONNECTING, UPGRADING, OPEN = 0, 1, 2


def _mask(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, ``opcode``, masked ``payload`` (short control and request frames only)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    size = [0x80 | length] if length < 126 else [0xFE, *length.to_bytes(2)]
    return bytes([0x80 | opcode, *size]) + key + masked


class Client:
    __slots__ = ("buffer", "index", "slow", "sock", "state", "subscribed", "symbols")

    def __init__(self, index: int, symbols: list[str], slow: bool) -> None:
        self.index, self.symbols, self.slow = index, symbols, slow
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.state = CONNECTING
        self.buffer = b""
        self.subscribed = False


class Load:
    def __init__(self, host: str, port: int, fast: int, slow: int, slow_symbols: int, symbols: list[str]) -> None:
        self.host, self.port = host, port
        self.fast, self.slow_symbols, self.symbols = fast, slow_symbols, symbols
        self.source_ips = [f"127.0.0.{n}" for n in range(2, 10)]  # 8 x 28k ephemeral ports: never short
        self.epoll = select.epoll()
        self.clients: dict[int, Client] = {}
        self.waiting: deque[int] = deque(range(fast + slow))  # client indexes still to connect
        self.reconnect_at: deque[tuple[float, int]] = deque()  # float-ok: monotonic times
        self.in_flight = 0
        self.window_ns = (0, 0)  # updates published inside this window are measured
        self.histogram = [0] * (HISTOGRAM_MS + 1)  # fast clients, per ms
        self.counts: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.fast_with_drops: set[int] = set()

    # --- connections -----------------------------------------------------------------------------------

    def start_connects(self) -> None:
        now = time.monotonic()
        while self.reconnect_at and self.reconnect_at[0][0] <= now:
            self.waiting.append(self.reconnect_at.popleft()[1])
        while self.waiting and self.in_flight < _HANDSHAKES_IN_FLIGHT:
            index = self.waiting.popleft()
            slow = index >= self.fast
            count = self.slow_symbols if slow else 1
            symbols = [f"bench.{self.symbols[(index + k) % len(self.symbols)]}" for k in range(count)]
            client = Client(index, symbols, slow)
            if slow:  # a small kernel buffer: it backs up to the gateway after a few kilobytes
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sock.bind((self.source_ips[index % len(self.source_ips)], 0))
            code = client.sock.connect_ex((self.host, self.port))
            if code not in (0, errno.EINPROGRESS):
                self.failures[os.strerror(code)] += 1
                client.sock.close()
                continue
            self.clients[client.sock.fileno()] = client
            self.epoll.register(client.sock.fileno(), select.EPOLLOUT)
            self.in_flight += 1

    def connected(self, client: Client) -> None:
        error = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.drop(client, f"connect: {os.strerror(error)}")
            return
        key = base64.b64encode(os.urandom(16)).decode()
        client.sock.send(
            f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        client.state = UPGRADING
        self.epoll.modify(client.sock.fileno(), select.EPOLLIN)

    def upgraded(self, client: Client, data: bytes, now_ns: int) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            client.buffer = data
            return
        if not data.startswith(b"HTTP/1.1 101"):
            self.drop(client, data[: data.find(b"\r\n")].decode(errors="replace"))
            return
        client.state = OPEN
        request = {"action": "subscribe", "channels": ["trade"], "symbols": client.symbols}
        client.sock.send(_mask(0x1, json.dumps(request).encode()))
        client.buffer = self.frames(client, data[end + 4 :], now_ns)

    def drop(self, client: Client, failure: str | None = None) -> None:
        """Forgets a connection; a slow client comes back (it was closed for lagging, as it should be)."""
        if failure is not None:
            self.failures[failure[:80]] += 1
        if not client.subscribed:
            self.in_flight -= 1
        fd = client.sock.fileno()
        self.clients.pop(fd, None)
        self.epoll.unregister(fd)
        client.sock.close()
        if client.subscribed:
            if client.slow:
                self.counts["slow reconnects"] += 1
                self.reconnect_at.append((time.monotonic() + random.uniform(0.5, 1.5), client.index))  # float-ok
            else:
                self.counts["fast connections lost"] += 1

    # --- reading ---------------------------------------------------------------------------------------

    def readable(self, client: Client, events: int, now_ns: int) -> None:
        if client.slow and client.subscribed:  # it reads nothing: this is the gateway closing it
            self.drop(client)
            return
        try:
            data = client.sock.recv(1 << 18)
        except OSError as exc:
            self.drop(client, f"recv: {exc}")
            return
        if not data:
            self.drop(client, None if client.subscribed else "closed during the handshake")
            return
        if client.buffer:
            data, client.buffer = client.buffer + data, b""
        if client.state == UPGRADING:
            self.upgraded(client, data, now_ns)
        else:
            client.buffer = self.frames(client, data, now_ns)

    def frames(self, client: Client, data: bytes, now_ns: int) -> bytes:
        """Handles every complete frame in ``data``; returns the incomplete rest."""
        offset, size = 0, len(data)
        start_ns, end_ns = self.window_ns
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
            at = offset + head
            offset = at + length
            if opcode == 0x1 and data.startswith(_UPDATE, at):
                ts_at = data.rfind(_RECV_TS, at, offset) + len(_RECV_TS)
                stop = ts_at
                while 48 <= data[stop] <= 57:
                    stop += 1
                sent_ns = int(data[ts_at:stop])
                if start_ns <= sent_ns < end_ns and not client.slow:
                    self.histogram[min((now_ns - sent_ns) // 1_000_000, HISTOGRAM_MS)] += 1
            elif opcode == 0x1:
                self.control(client, json.loads(data[at:offset]))
            elif opcode == 0x9:  # ping: answer, or the gateway's keepalive closes us
                client.sock.send(_mask(0xA, data[at:offset]))
            elif opcode == 0x8:
                self.closes[int.from_bytes(data[at : at + 2]) if length >= 2 else 1005] += 1
                client.sock.send(_mask(0x8, data[at : at + 2]))
                self.drop(client)
                return b""
        return data[offset:]

    def control(self, client: Client, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribed" and not client.subscribed:
            client.subscribed = True
            self.in_flight -= 1
            if client.slow:  # stop reading; epoll still reports the gateway dropping the connection
                self.epoll.modify(client.sock.fileno(), select.EPOLLRDHUP)
        elif kind == "dropped":
            self.counts["fast updates lost (notices)"] += message["count"]
            self.fast_with_drops.add(client.index)
        elif kind == "error":
            self.drop(client, f"error reply {message}")

    # --- the loop --------------------------------------------------------------------------------------

    def run_once(self, timeout_s: float) -> None:  # float-ok: seconds
        self.start_connects()
        now_ns = time.time_ns()
        for fd, events in self.epoll.poll(timeout_s):
            client = self.clients.get(fd)
            if client is None:
                continue
            if client.state == CONNECTING:
                self.connected(client)
            else:
                self.readable(client, events, now_ns)

    def subscribed(self) -> int:
        return sum(1 for client in self.clients.values() if client.subscribed)

    def report(self) -> dict[str, Any]:
        return {
            "clients": self.subscribed(),
            "histogram": self.histogram,
            "counts": dict(self.counts),
            "fast_clients_with_drops": len(self.fast_with_drops),
            "closes": dict(self.closes),
            "failures": dict(self.failures),
        }


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
    """The load process: connects everyone, reports, measures the window it is sent, reports the statistics."""
    # SCHED_BATCH: when it does wake, the load process does not preempt the gateway mid fan-out.
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    load = Load(host, port, fast, slow, slow_symbols, symbols)
    started = time.monotonic()
    while load.waiting or load.in_flight:
        load.run_once(0.01)
        if time.monotonic() - started > 300:
            break
    pipe.send({"connected": load.subscribed(), "seconds": time.monotonic() - started, "failures": dict(load.failures)})
    while True:
        load.run_once(0)
        if pipe.poll():
            command = pipe.recv()
            if command == "report":
                pipe.send(load.report())
                return
            load.window_ns = tuple(command["window_ns"])  # type: ignore[assignment]
        time.sleep(tick_s)
