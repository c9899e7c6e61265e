"""The push gateway: bus followers -> latest state + fan-out -> WebSocket clients (docs/push.md).

Stateless: each gateway follows the topics from their end (no consumer group, nothing stored on the server), so
any number run side by side behind a load balancer. At start it reads back the last ``push.prime_records``
records of each partition of the quotes, klines and indicators topics to know the current state; trades are
followed from the end only.

One event loop does everything. The bus readers decode each event of a record once, build its message once and
hand it to every subscriber with the synchronous :meth:`Client.deliver`, which never waits for a socket. The handshake
checks (capacity, Origin, API key) run in ``process_request`` before the WebSocket upgrade; a sweeper closes
clients that stay behind or idle; shutdown stops accepting, closes every client with 1001, then stops the
readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from market_ingestor.bus import PIPELINE_TOPICS, Bus, Subscriber, open_bus
from market_ingestor.bus.topics import Topics, prefixed
from market_ingestor.config import Config
from market_ingestor.errors import BusError, ConfigError
from market_ingestor.push.client import Client
from market_ingestor.push.metrics import PushMetrics
from market_ingestor.push.protocol import (
    Pair,
    Ping,
    PushRequestError,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode_reply,
    error_reply,
    known_channels,
    parse_request,
    pong_reply,
)
from market_ingestor.push.updates import LatestState, to_updates
from market_ingestor.retry import RetryPolicy

log = logging.getLogger(__name__)

# Checks an API key; True lets the client in. The real one (issue 5's keys) is wired by the caller.
Verifier = Callable[[str], Awaitable[bool]]

# A message this many times over push.max_message_bytes is not even read: the connection closes with 1009.
FRAME_LIMIT_FACTOR = 16
BUS_RETRY = RetryPolicy(1.0, 1.0)  # a failed bus read: again every second, forever (clients stay connected)
# asyncio's default of 100 pending connections drops SYNs when thousands of clients reconnect at once.
_LISTEN_BACKLOG = 4096
_FETCH_RECORDS = 2000  # records per bus read
_READ_BACK_WAIT_S = 30.0  # float-ok: the longest a starting gateway waits for its read-back before listening


def api_key_of(request: Request) -> str | None:
    """The key from ``?api_key=`` or else the ``X-API-Key`` header."""
    from_query = parse_qs(urlsplit(request.path).query).get("api_key")
    if from_query:
        return from_query[0]
    return request.headers.get("X-API-Key")


class Gateway:
    def __init__(self, config: Config, verify: Verifier | None = None, bus: Bus | None = None) -> None:
        self.config = config
        self.settings = settings = config.push
        if settings.auth_enabled and verify is None:
            raise ConfigError("push.auth_enabled is set but no API-key verifier was given to the gateway")
        self._verify = verify if settings.auth_enabled else None
        self._bus = bus or open_bus(config.bus)
        self._prefix = config.bus.topic_prefix
        self._channels = known_channels(config.streams.intervals, config.streams.indicators)
        self._origins = frozenset(settings.allowed_origins)
        self.metrics = PushMetrics()
        self.state = LatestState(settings.state_max_entries)
        self._clients: set[Client] = set()
        self._subscribers: dict[Pair, set[Client]] = {}
        self._followers: list[Subscriber] = []
        self._tasks: set[asyncio.Task[None]] = set()  # readers and the sweeper
        self._closers: set[asyncio.Task[None]] = set()  # clients being closed
        self._server: Server | None = None
        self._stopping = False
        self.failed = asyncio.Event()  # set when a background task died; ``failure`` says why
        self.failure: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Follows the bus, then listens. Records published after this returns reach the subscribers."""
        settings = self.settings
        await self._bus.ensure_topics(prefixed(PIPELINE_TOPICS, self._prefix))
        try:
            primed: list[asyncio.Event] = []
            for topic, tail in (
                (Topics.TRADES, 0),
                (Topics.QUOTES, settings.prime_records),
                (Topics.KLINES, settings.prime_records),
                (Topics.INDICATORS, settings.prime_records),
            ):
                follower = self._bus.follower([self._prefix + topic], tail=tail)
                await follower.start()
                self._followers.append(follower)
                read_back = asyncio.Event()
                if not tail:
                    read_back.set()
                primed.append(read_back)
                self._spawn(self._follow(follower, topic, read_back), f"push-follow-{topic}")
            # The read-back fills the state before anyone can subscribe: dispatched to the clients that reconnect
            # the moment a restarted gateway listens, it was a burst of old updates (up to prime_records records
            # per stream) that overflowed their queues, "dropped" notices for clients that read as fast as
            # they could. Bounded: a bus that does not answer leaves a gateway serving what it has.
            try:
                async with asyncio.timeout(_READ_BACK_WAIT_S):
                    for read_back in primed:
                        await read_back.wait()
            except TimeoutError:
                log.warning("push: serving before the read-back finished", extra={"waited_s": _READ_BACK_WAIT_S})
            self._server = await serve(
                self._handle,
                settings.host,
                settings.port,
                process_request=self._admit,
                compression=None,  # per-client deflate would undo "encode once" and cost a core
                max_size=settings.max_message_bytes * FRAME_LIMIT_FACTOR,
                write_limit=settings.write_limit_bytes,
                ping_interval=settings.ping_interval_s,
                ping_timeout=settings.ping_timeout_s,
                close_timeout=settings.close_timeout_s,
                backlog=_LISTEN_BACKLOG,
                reuse_port=settings.reuse_port or None,
            )
        except BaseException:
            await self.stop()
            raise
        self._spawn(self._sweep(), "push-sweeper")
        log.info("push gateway listening", extra={"host": settings.host, "port": self.port})

    async def stop(self) -> None:
        """Stops accepting, closes every client with 1001 (going away), then stops following the bus."""
        self._stopping = True
        if self._server is not None:
            self._server.close(close_connections=False)
            for client in list(self._clients):
                if not client.closing:  # one being closed for lag or idleness keeps its reason
                    self._close(client, 1001, "server shutting down")
            if self._closers:
                await asyncio.wait(list(self._closers))
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for follower in self._followers:
            await follower.stop()
        self._followers.clear()
        log.info("push gateway stopped", extra={"metrics": str(self.metrics)})

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A reader that died would leave clients connected to a feed that no longer moves: say so loudly
            # and let the owner (the push command) stop the gateway, so a supervisor restarts it.
            log.error("push: %s failed", task.get_name(), exc_info=task.exception())
            self.failure = task.exception()
            self.failed.set()

    # --- the bus side ------------------------------------------------------------------------------------

    async def _follow(self, follower: Subscriber, topic: str, read_back: asyncio.Event) -> None:
        """Dispatches every record of ``topic``; ``read_back`` is set once a fetch comes back short of a full
        batch (the records that were there at start are in: the read-back is done) or the bus does not answer."""
        retries = BUS_RETRY.retries(f"push: bus read of {topic}")
        try:
            while True:
                try:
                    deliveries = await follower.fetch(max_records=_FETCH_RECORDS, timeout_s=1.0)
                except BusError as exc:
                    read_back.set()
                    # The client library reconnects by itself; clients stay connected meanwhile.
                    log.warning("push: bus read failed; retrying", extra={"topic": topic, "error": str(exc)})
                    await asyncio.sleep(retries.next_delay_s())
                    continue
                for delivery in deliveries:
                    self.dispatch(topic, delivery.value)
                if len(deliveries) < _FETCH_RECORDS:
                    read_back.set()
        finally:
            read_back.set()  # a reader that fails does not hold the start up (the failure is reported)

    def dispatch(self, topic: str, value: bytes) -> None:
        """One record of the logical ``topic`` (its events, in order) -> the latest state and every subscriber.
        An event that is not valid is counted and skipped; the others still go out. Never waits."""
        updates, problems = to_updates(topic, value)
        for problem in problems:
            self.metrics.bad_records_total += 1
            if self.metrics.bad_records_total & (self.metrics.bad_records_total - 1) == 0:  # 1st, 2nd, 4th, ...
                log.warning(
                    "push: skipped an event that is not a valid %s",
                    topic,
                    extra={"topic": topic, "error": problem, "skipped": self.metrics.bad_records_total},
                )
        self.metrics.updates_received_total += len(updates)
        for update in updates:
            if update.pair[0] in self._channels:
                self.state.offer(update)
            subscribers = self._subscribers.get(update.pair)
            if subscribers:
                for client in subscribers:
                    client.deliver(update.message, update.pair, update.conflate, update.revision_of)

    # --- the client side ---------------------------------------------------------------------------------

    def _refuse(self, conn: ServerConnection, reason: str, status: http.HTTPStatus, text: str) -> Response:
        self.metrics.refused_total[reason] += 1
        return conn.respond(status, text + "\n")

    async def _admit(self, conn: ServerConnection, request: Request) -> Response | None:
        """The handshake checks; a Response refuses the upgrade."""
        if self._stopping:
            return self._refuse(conn, "stopping", http.HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down")
        if len(self._clients) >= self.settings.max_clients:
            return self._refuse(conn, "max_clients", http.HTTPStatus.SERVICE_UNAVAILABLE, "too many clients")
        origins = request.headers.get_all("Origin")
        # Browsers always send Origin; other clients need not (they are not exposed to cross-site hijacking).
        if self._origins and (len(origins) > 1 or (origins and origins[0] not in self._origins)):
            return self._refuse(conn, "origin", http.HTTPStatus.FORBIDDEN, f"origin not allowed: {origins[0]}")
        if self._verify is not None:
            key = api_key_of(request)
            if not key:
                return self._refuse(
                    conn, "auth", http.HTTPStatus.UNAUTHORIZED, "API key required: ?api_key=KEY or X-API-Key header"
                )
            try:
                accepted = await self._verify(key)
            except Exception:  # the verifier is a plug-in (a database behind it): refuse, keep the reason in the log
                log.exception("push: API key verification failed")
                return self._refuse(
                    conn, "auth_unavailable", http.HTTPStatus.SERVICE_UNAVAILABLE, "cannot verify API keys now"
                )
            if not accepted:
                return self._refuse(conn, "auth", http.HTTPStatus.UNAUTHORIZED, "unknown or revoked API key")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        if len(self._clients) >= self.settings.max_clients:  # handshakes that raced past _admit
            self.metrics.refused_total["max_clients"] += 1
            await conn.close(1013, "too many clients, try again later")
            return
        if self.settings.socket_send_buffer_bytes:
            sock = conn.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_send_buffer_bytes)
        client = Client(conn, self.settings.queue_size, self.settings.write_limit_bytes, self.metrics)
        self._clients.add(client)
        self.metrics.connections_total += 1
        self.metrics.clients = len(self._clients)
        try:
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(client.write_loop())
                await self._read_requests(client)
                writer.cancel()
        finally:
            for pair in client.subscriptions:
                self._drop_subscriber(pair, client)
            self._clients.discard(client)
            self.metrics.clients = len(self._clients)

    async def _read_requests(self, client: Client) -> None:
        while True:
            try:
                message = await client.conn.recv(decode=False)
            except ConnectionClosed:
                return
            client.last_request_at = time.monotonic()
            self.handle_request(client, message)

    def handle_request(self, client: Client, message: bytes) -> None:
        """Answers one client message; bad ones get an error reply, never an exception."""
        try:
            request = parse_request(message, self.settings.max_message_bytes, self._channels)
            if isinstance(request, Ping):
                client.deliver(pong_reply(request))
            elif isinstance(request, Subscribe):
                self._subscribe(client, request)
            elif isinstance(request, Unsubscribe):
                self._unsubscribe(client, request)
        except PushRequestError as error:
            self.metrics.request_errors_total[error.code] += 1
            client.deliver(error_reply(error))

    def _subscribe(self, client: Client, request: Subscribe) -> None:
        limit = self.settings.max_subscriptions
        asked = len(set(request.channels)) * len(set(request.symbols))
        if asked > limit:  # refused before the pairs are built: a small message can name very many
            raise PushRequestError(
                "too_many_subscriptions",
                f"{asked} (channel, symbol) pairs asked; the limit is {limit} per connection",
                request.id,
            )
        pairs = request.pairs()
        new = [pair for pair in pairs if pair not in client.subscriptions]
        if len(client.subscriptions) + len(new) > limit:
            raise PushRequestError(
                "too_many_subscriptions",
                f"{len(new)} new subscription(s) on top of {len(client.subscriptions)} would exceed the limit of "
                f"{limit} (channel, symbol) pairs per connection",
                request.id,
            )
        for pair in new:
            self._subscribers.setdefault(pair, set()).add(client)
            client.subscriptions.add(pair)
        reply = Subscribed(request.channels, request.symbols, len(client.subscriptions), request.id)
        client.deliver(encode_reply(reply))
        # No await since the pairs were added: the state goes out before any update that follows it.
        for pair in pairs:
            for message, conflate in self.state.messages(pair):
                client.deliver(message, pair, conflate)

    def _unsubscribe(self, client: Client, request: Unsubscribe) -> None:
        channels, symbols = set(request.channels), set(request.symbols)
        for pair in [pair for pair in client.subscriptions if pair[0] in channels and pair[1] in symbols]:
            client.subscriptions.discard(pair)
            self._drop_subscriber(pair, client)
        reply = Unsubscribed(request.channels, request.symbols, len(client.subscriptions), request.id)
        client.deliver(encode_reply(reply))

    def _drop_subscriber(self, pair: Pair, client: Client) -> None:
        subscribers = self._subscribers.get(pair)
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self._subscribers[pair]

    # --- closing clients ---------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        settings = self.settings
        interval_s = max(0.05, min(1.0, settings.max_behind_s / 4, settings.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for client in list(self._clients):
                if client.closing:
                    continue
                behind_since = client.outbox.behind_since
                if behind_since is not None and now - behind_since > settings.max_behind_s:
                    self.metrics.lag_disconnects_total += 1
                    remote = str(client.conn.remote_address)
                    log.info("push: closing a client that stays behind", extra={"remote": remote})
                    self._close(client, 1008, f"too slow: updates waited over {settings.max_behind_s:g} s")
                elif not client.subscriptions and now - client.last_request_at > settings.idle_timeout_s:
                    self.metrics.idle_disconnects_total += 1
                    self._close(client, 1000, f"idle for {settings.idle_timeout_s:g} s without a subscription")

    def _close(self, client: Client, code: int, reason: str) -> None:
        client.closing = True
        task = asyncio.ensure_future(self._close_connection(client.conn, code, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_connection(self, conn: ServerConnection, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(conn.close(code, reason), self.settings.close_timeout_s)
        except TimeoutError:
            # A client that does not read never sees the close frame behind its unread data. Reset the
            # connection (linger 0): a plain close would leave the kernel holding the unsent data for minutes,
            # probing a zero window, and the client would not notice either.
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                # The client may have gone in the meantime: its socket is then closed already.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.transport.abort()
