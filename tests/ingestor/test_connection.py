"""The connection loop ends promptly on stop() whatever it is doing: serving, waiting to reconnect, or in the middle
of an opening handshake (a socket opened after stop() used to be served for ever: ingest then never exited)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from market_ingestor.ingestor.connection import Connection, ConnectionSettings
from market_ingestor.ingestor.exchanges import get_spec

STOP_WITHIN_S = 5.0  # float-ok: a duration; far below the read deadline, so only stop() can end the loop


@dataclass
class Venue:
    """A WebSocket server that holds each opening handshake until ``release`` is set, then sends frames."""

    server: Server
    handshakes: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        host, port = next(iter(self.server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}/ws"


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    holder: list[Venue] = []

    async def hold(_: ServerConnection, __: Request) -> Response | None:
        holder[0].handshakes.put_nowait(None)
        await holder[0].release.wait()
        return None

    async def chatter(ws: ServerConnection) -> None:
        while True:
            await ws.send("{}")
            await asyncio.sleep(0.01)

    async with serve(chatter, "127.0.0.1", 0, process_request=hold) as server:
        holder.append(Venue(server))
        yield holder[0]


def connection(url: str, backoff_s: float = 0.01) -> Connection:  # float-ok: a duration
    async def on_frame(frame: str | bytes, recv_ts: int) -> None:
        pass

    settings = ConnectionSettings(read_timeout_s=60.0, backoff_initial_s=backoff_s, backoff_max_s=backoff_s)
    return Connection(get_spec("binance"), url, on_frame, settings)


async def test_a_stop_during_the_opening_handshake_ends_the_loop(venue):
    conn = connection(venue.url)
    async with asyncio.TaskGroup() as group:
        running = group.create_task(conn.run())
        await asyncio.wait_for(venue.handshakes.get(), STOP_WITHIN_S)
        await conn.stop()
        venue.release.set()  # the server now completes the handshake: the loop must not serve that socket
        await asyncio.wait_for(running, STOP_WITHIN_S)
    assert conn.opened_count == 0


async def test_a_stop_during_the_reconnect_wait_ends_the_loop(venue):
    venue.release.set()
    conn = connection(venue.url, backoff_s=3600.0)
    async with asyncio.TaskGroup() as group:
        running = group.create_task(conn.run())
        await asyncio.wait_for(conn.connected.wait(), STOP_WITHIN_S)
        venue.server.close(close_connections=True)  # dropped: the loop waits up to an hour before reconnecting
        await asyncio.wait_for(until_reconnecting(conn), STOP_WITHIN_S)
        await conn.stop()
        await asyncio.wait_for(running, STOP_WITHIN_S)
    assert conn.opened_count == 1


async def until_reconnecting(conn: Connection) -> None:
    while conn.reconnects == 0:  # noqa: ASYNC110 - counted as the loop starts its wait, which offers no event
        await asyncio.sleep(0.01)
