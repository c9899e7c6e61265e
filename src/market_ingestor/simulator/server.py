"""The local exchange simulator: one WebSocket + HTTP server on one port for every simulated exchange.

    ws://HOST:PORT/{exchange}{dialect.ws_path}    the exchange's WebSocket API (subscriptions, market data)
    http://HOST:PORT/{exchange}{path}             its REST API: the instrument listing and the depth snapshot

Plain GET requests are answered in ``process_request`` before any WebSocket upgrade. Tests drive it through the
programmatic API::

    async with Simulator(SimulatorConfig(port=0, symbols=("BTCUSDT",), exchanges=("binance",))) as sim:
        url = sim.ws_url("binance")
        await sim.wait_subscribed("binance", Channel.TRADES, "BTCUSDT")
        await sim.drop_connections("binance")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from market_ingestor.errors import ConfigError
from market_ingestor.ingestor.exchanges.base import Channel
from market_ingestor.simulator import DIALECTS, get_dialect
from market_ingestor.simulator.dialect import SimDialect, SimInstrument
from market_ingestor.simulator.faults import FaultConfig, MalformedKind
from market_ingestor.simulator.journal import Journal
from market_ingestor.simulator.market import Market, instrument_for
from market_ingestor.simulator.pacing import Pace, run_market
from market_ingestor.simulator.replay import Recording, ReplayConfig
from market_ingestor.simulator.session import BatchingConnection
from market_ingestor.simulator.venue import SentTrades, SimStats, Venue

log = logging.getLogger(__name__)

StatsCondition = Callable[[SimStats], bool]


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 9100  # 0: any free port (see Simulator.port)
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")  # normalized; each exchange lists all of them
    exchanges: tuple[str, ...] = tuple(DIALECTS)
    trades_per_s: float = 100.0  # in total, over all symbols and exchanges
    seed: int = 0
    book_depth: int = 25  # levels per side
    faults: FaultConfig = field(default_factory=FaultConfig)
    replay: ReplayConfig | None = None  # that exchange serves the recording instead of the market
    session_queue_frames: int = 100_000  # a session with more frames waiting is closed as a slow consumer
    slice_ms: float = 10.0  # float-ok: a time slice
    book_interval_ms: float = 100.0
    journal: Path | None = None  # append what is sent here (see journal.py)
    journal_flush_interval_s: float = 1.0
    # The server's WebSocket pings (None: none), as exchanges send them; a client that reads nothing for longer
    # than twice this is dropped.
    ping_interval_s: float | None = 20.0  # float-ok: a duration

    def __post_init__(self) -> None:
        if not self.exchanges:
            raise ConfigError("the simulator needs at least one exchange")
        if self.trades_per_s < 0:
            raise ConfigError(f"trades_per_s must be >= 0, got {self.trades_per_s}")
        if self.session_queue_frames < 1 or self.slice_ms <= 0 or self.book_interval_ms <= 0:
            raise ConfigError("session_queue_frames, slice_ms and book_interval_ms must be positive")
        for symbol in self.symbols:
            instrument_for(symbol)  # refuses what the market cannot list, before anything listens
        if self.replay is not None and self.replay.exchange not in self.exchanges:
            raise ConfigError(f"the replayed exchange {self.replay.exchange!r} must be one of the exchanges served")


class Simulator:
    def __init__(self, config: SimulatorConfig, dialects: Mapping[str, SimDialect] | None = None) -> None:
        """``dialects`` adds or overrides dialects by name (tests use their own); others come from the registry."""
        self.config = config
        self._dialects = dict(dialects or {})
        self._venues: dict[str, Venue] = {}
        self._server: Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._journal: Journal | None = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.config.journal is not None:
            self._journal = Journal(self.config.journal)
            self._journal.open()
        self._venues = {name: self._make_venue(name) for name in self.config.exchanges}
        try:
            self._server = await serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._route,
                create_connection=BatchingConnection,
                compression=None,  # exchanges mostly send uncompressed; deflate would cost more than all the rest
                ping_interval=self.config.ping_interval_s,
                ping_timeout=self.config.ping_interval_s,
            )
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise ConfigError(f"the simulator cannot listen on {where}: {exc.strerror}; choose another port") from exc
        self._runner = asyncio.create_task(self._run(), name="simulator")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._journal is not None:
            self._journal.close()  # after the server: the sessions' end records are in
            self._journal = None

    def _make_venue(self, name: str) -> Venue:
        config, replay = self.config, self.config.replay
        if replay is not None and replay.exchange == name:
            dialect = self._dialects.get(name) or _optional_dialect(name)
            source: Market | Recording = Recording.load(replay.files)
        else:
            dialect = self._dialects.get(name) or get_dialect(name)
            source = Market(config.symbols, seed=f"{config.seed}:{name}", depth=config.book_depth)
        speed = replay.speed if replay is not None else None
        return Venue(name, dialect, source, config.faults, config.session_queue_frames, speed, self._journal)

    async def _run(self) -> None:
        config = self.config
        markets = [venue for venue in self._venues.values() if venue.market is not None]
        per_symbol = config.trades_per_s / max(1, len(markets) * len(config.symbols))
        pace = Pace(per_symbol, config.slice_ms / 1000, config.book_interval_ms / 1000)
        faults = config.faults
        try:
            async with asyncio.TaskGroup() as tasks:
                for venue in markets:
                    tasks.create_task(run_market(venue, pace))
                if (journal := self._journal) is not None:
                    tasks.create_task(_every(config.journal_flush_interval_s, _flush(journal)))
                for venue in self._venues.values():
                    if faults.drop_every_s:
                        tasks.create_task(_every(faults.drop_every_s, venue.drop_connections))
                    if faults.stall_every_s:
                        tasks.create_task(_every(faults.stall_every_s, _stall_for(venue, faults.stall_s)))
        except Exception:
            log.exception("the simulator's market stopped")
            raise

    # -- routing

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        name, slash, rest = url.path.removeprefix("/").partition("/")
        venue = self._venues.get(name)
        if venue is None:
            return _json(404, {"error": f"no exchange {name!r} here; try /{{{'|'.join(self._venues)}}}/..."})
        path = slash + rest
        if "websocket" in request.headers.get("Upgrade", "").lower():
            if venue.accepts_ws(path):
                return None
            return _json(404, {"error": f"{name}'s WebSocket is at /{name}{venue.ws_path}, not /{name}{path}"})
        status, body = venue.rest(path, url.query)
        return _response(status, body)

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, BatchingConnection) and ws.request is not None  # see start()
        url = urlsplit(ws.request.path)
        await self._venues[url.path.split("/")[1]].serve(ws, url.query)

    # -- the programmatic API

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running: use `async with Simulator(...)` or start()")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def exchanges(self) -> tuple[str, ...]:
        return tuple(self._venues)

    def _host(self) -> str:
        host = self.config.host
        # Listening on every interface; clients on this machine still connect through the loopback.
        return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host

    def ws_url(self, exchange: str) -> str:
        return f"ws://{self._host()}:{self.port}/{exchange}{self._venue(exchange).ws_path}"

    def rest_url(self, exchange: str) -> str:
        self._venue(exchange)
        return f"http://{self._host()}:{self.port}/{exchange}"

    def _venue(self, exchange: str) -> Venue:
        try:
            return self._venues[exchange]
        except KeyError:
            served = ", ".join(self._venues)
            raise ConfigError(f"the simulator does not serve {exchange!r}: it serves {served}") from None

    def instruments(self, exchange: str) -> tuple[SimInstrument, ...]:
        market = self._venue(exchange).market
        return market.instruments() if market is not None else ()

    async def wait_subscribed(self, exchange: str, channel: Channel, symbol: str, timeout_s: float = 5.0) -> None:
        """Until some session of ``exchange`` subscribes to ``channel`` for ``symbol`` (normalized or native)."""
        venue = self._venue(exchange)
        key = (channel, venue.key(symbol))
        await venue.wait_until(lambda: bool(venue.index.get(key)), timeout_s)

    async def wait_sessions(self, exchange: str, opened: int = 1, timeout_s: float = 5.0) -> None:
        """Until ``exchange`` has opened at least ``opened`` sessions since the start (reconnects count)."""
        venue = self._venue(exchange)
        await venue.wait_until(lambda: venue.counters.sessions_opened >= opened, timeout_s)

    async def wait_stats(self, exchange: str, condition: StatsCondition, timeout_s: float = 5.0) -> SimStats:
        """Until ``condition(stats)`` holds; re-checked whenever the exchange's state or counters change."""
        venue = self._venue(exchange)
        await venue.wait_until(lambda: condition(venue.stats()), timeout_s)
        return venue.stats()

    async def drop_connections(self, exchange: str) -> int:
        """Aborts every open connection of ``exchange`` (no close frame) and waits until they are gone."""
        return await self._venue(exchange).drop_connections()

    def stall(self, exchange: str, seconds: float | None = None) -> int:
        """Stops sending on the open sessions of ``exchange`` for ``seconds`` (None: until unstall); their sockets
        stay open and frames due meanwhile are lost. Sessions opened later are not stalled."""
        return self._venue(exchange).stall(seconds)

    def unstall(self, exchange: str) -> None:
        self._venue(exchange).unstall()

    def inject_malformed(self, exchange: str, count: int = 1, kind: MalformedKind | None = None) -> None:
        """The next ``count`` data frames of ``exchange`` are each preceded by a broken copy (kinds alternate)."""
        self._venue(exchange).faults.request_malformed(count, kind)

    def send_raw(self, exchange: str, text: str) -> int:
        """Sends ``text`` as one frame to every open session of ``exchange`` (e.g. a channel the connector does not
        handle); the number of sessions it went to."""
        return self._venue(exchange).send_raw(text)

    def inject_gap(self, exchange: str, symbol: str | None = None, updates: int = 1) -> None:
        """The next update of ``symbol`` (default: every symbol) skips ``updates`` trade ids and book updates."""
        market = self._venue(exchange).market
        if market is None:
            raise ConfigError(f"{exchange} replays a recording: it has no market to put a gap in")
        for name in (symbol,) if symbol is not None else market.symbols:
            market.inject_gap(name, updates)

    def slow_sends(self, exchange: str, ms: float) -> None:  # float-ok: a delay
        """Sleeps ``ms`` before every frame sent to ``exchange``'s sessions; 0 turns it off."""
        self._venue(exchange).faults.slow_send_ms = ms

    def stats(self, exchange: str) -> SimStats:
        return self._venue(exchange).stats()

    def sent_trades(self, exchange: str, symbol: str) -> SentTrades:
        """Trades of ``symbol`` written to at least one session of ``exchange``, and their total quantity."""
        return self._venue(exchange).sent_trades(symbol)


def _optional_dialect(name: str) -> SimDialect | None:
    # A replay needs no dialect (the recording is the protocol); with one, it also answers keep-alive pings.
    try:
        return get_dialect(name)
    except ConfigError:
        return None


async def _every(interval_s: float, action: Callable[[], Awaitable[object]]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await action()


def _flush(journal: Journal) -> Callable[[], Awaitable[object]]:
    async def flush() -> None:
        journal.flush()

    return flush


def _stall_for(venue: Venue, seconds: float) -> Callable[[], Awaitable[object]]:
    async def stall() -> int:
        return venue.stall(seconds)

    return stall


def _json(status: int, document: object) -> Response:
    return _response(status, msgspec.json.encode(document))


def _response(status: int, body: bytes) -> Response:
    headers = Headers(
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
    )
    return Response(status, HTTPStatus(status).phrase, headers, body)
