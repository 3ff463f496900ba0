"""The serving HTTP/1.1 server (``asyncio.Protocol`` + httptools): ``start_server`` and
``shutdown`` for the model server and the webhook receiver alike.

Each ``HttpServer`` owns what its connections share (handler, limits, connections, in-flight
count, Date line, shutdown state) and hands itself to each connection (``protocol.py``); the
wire format lives in ``wire.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
from collections.abc import Callable

from mlflow_deploy_plugins.serving.errors import Busy, ServingError
from mlflow_deploy_plugins.serving.protocol import LINGER_S, HttpProtocol
from mlflow_deploy_plugins.serving.wire import (
    CONN_CLOSE,
    BodyBudget,
    Exchange,
    Handler,
    HttpLimits,
    OnResponse,
    Request,
    Response,
    date_line,
    error_response,
    render,
    split_url,
)

#: ``authorize(path, headers)``: the error refusing a request before its body is read, or None.
Authorize = Callable[[str, dict], "ServingError | None"]

_logger = logging.getLogger(__name__)

__all__ = [
    "Handler",
    "HttpLimits",
    "HttpServer",
    "OnResponse",
    "Request",
    "Response",
    "in_flight",
    "shutdown",
    "start_server",
]


class HttpServer(asyncio.AbstractServer):
    """One listening server and the state its connections share (uvicorn's ``ServerState``).

    A timer ticks while it serves or has connections: it refreshes the coarse clock and the Date
    line (per tick, not per response) and lets each connection check its deadlines.

    Args:
        handler: Called synchronously on the event loop for each complete request.
        limits: Sizes and timeouts of every connection.
        on_response: Optional access-log hook.
        loop: The running loop.
        authorize: Optional check of a request with a body once its headers are read (before
            any ``100 Continue`` or body byte is accepted): returns the error to answer, or None.
    """

    def __init__(
        self,
        handler: Handler,
        limits: HttpLimits,
        on_response: OnResponse | None,
        loop: asyncio.AbstractEventLoop,
        authorize: Authorize | None = None,
    ):
        self.handler = handler
        self.authorize = authorize
        self.budget = BodyBudget(limits.max_inflight_body_bytes)
        self.limits = limits
        self.on_response = on_response
        self.loop = loop
        #: Open connections, oldest first (a dict: ordered, O(1) removal).
        self.connections: dict[HttpProtocol, None] = {}
        #: Idle connections closed to make room for a new one at ``max_connections``.
        self.idle_closed_at_cap = 0
        #: Requests received whose response is not written yet.
        self.in_flight = 0
        self.shutting_down = False
        # A coarse clock (refreshed every tick) is enough for deadlines and costs nothing.
        self.now = loop.time()
        self.date_line = date_line()
        #: Raw header name -> lower-cased str, shared by the connections (bounded by them).
        self.header_names: dict[bytes, str] = {}
        self._listener: asyncio.AbstractServer | None = None
        self._drained: asyncio.Future[None] | None = None
        self._rid_prefix = secrets.token_hex(4) + "-"
        self._rid_counter = itertools.count(1)
        shortest = min(
            limits.keepalive_timeout_s,
            limits.request_timeout_s,
            limits.write_timeout_s,
            limits.first_request_timeout_s,
        )
        self._tick = max(0.01, min(1.0, shortest / 4, LINGER_S / 4))
        self._timer: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool, backlog: int) -> None:
        """Bind and start accepting, and ticking (once bound: a tick that found the server not
        serving yet would stop for good)."""
        self._listener = await self.loop.create_server(
            lambda: HttpProtocol(self), host, port, reuse_port=reuse_port, backlog=backlog
        )
        self._timer = self.loop.call_later(self._tick, self._sweep)

    def next_request_id(self) -> str:
        """An id for a request that brought none (or an invalid one): unique per server."""
        return self._rid_prefix + str(next(self._rid_counter))

    def admit(self, conn: HttpProtocol, transport: asyncio.Transport) -> bool:
        """Register a new connection. At ``max_connections`` the oldest idle connection (one
        that sent nothing yet, or an idle keep-alive one: nothing in progress, nothing owed) is
        closed to make room, as nginx reuses idle keep-alive connections, so silent clients
        cannot lock probes and real clients out. When every connection is busy, the new one is
        answered 503 and closed at once (accepting and closing frees the kernel's accept queue
        and tells the client to retry now; not accepting would leave it hanging in the
        backlog)."""
        connections = self.connections
        if len(connections) < self.limits.max_connections or self._close_oldest_idle():
            connections[conn] = None
            return True
        error = Busy(
            f"too many connections (max_connections={self.limits.max_connections}), all busy",
            field="max_connections",
        )
        request = Request("", "", "", {}, b"", "", self.next_request_id())
        transport.write(
            render(error_response(error, request.request_id), request, CONN_CLOSE, self.date_line)
        )
        transport.close()
        return False

    def _close_oldest_idle(self) -> bool:
        for old in self.connections:  # in the order they came: oldest first
            if old.close_if_idle():
                del self.connections[old]  # its connection_lost comes later
                self.idle_closed_at_cap += 1
                return True
        return False

    def preflight(self, exchange: Exchange, length: int) -> ServingError | None:
        """A request with a body (``length`` bytes declared, 0 when chunked), headers read:
        check its token (when the app has one), then that its declared body fits in the body
        budget's room now. Nothing is reserved: bytes count as they arrive, so a client that
        declares a large body and sends nothing holds nothing."""
        if self.authorize is not None:
            try:
                path = split_url(exchange.url)[0]
            except Exception:  # a bad target: on_message_complete refuses it
                path = ""
            error = self.authorize(path, exchange.headers)
            if error is not None:
                return error
            exchange.authorized = True
        if self.budget.in_use + length > self.budget.limit:
            return self.busy_bodies()
        return None

    def busy_bodies(self) -> Busy:
        return Busy(
            "too many request body bytes in flight on this server "
            f"(max_inflight_body_bytes={self.limits.max_inflight_body_bytes}); retry later",
            field="max_inflight_body_bytes",
        )

    def connection_closed(self, conn: HttpProtocol) -> None:
        """Called by a connection once its transport is gone."""
        self.connections.pop(conn, None)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        self.date_line = date_line()
        for conn in list(self.connections):
            conn.check_deadlines(now)
        self.budget.maybe_trim()
        if self.connections or self.is_serving():
            self._timer = self.loop.call_later(self._tick, self._sweep)
        else:
            self._timer = None

    def _stop_ticking(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def shutdown(self, timeout: float = 10.0, idle_grace_s: float = 0.0) -> None:
        """See :func:`shutdown`."""
        self.close()
        if not self.shutting_down:
            self.shutting_down = True
            self._drained = self.loop.create_future()
            for conn in list(self.connections):
                conn.begin_shutdown(idle_grace_s)
            if self.connections:
                try:
                    await asyncio.wait_for(asyncio.shield(self._drained), timeout)
                except asyncio.TimeoutError:
                    _logger.warning("aborting %d connections at shutdown", len(self.connections))
                    for conn in list(self.connections):
                        conn.abort()
                    await asyncio.sleep(0)  # let connection_lost run
            self._stop_ticking()
        await self.wait_closed()

    # asyncio.AbstractServer, delegated to the listening server

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._listener.sockets) if self._listener is not None else ()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def is_serving(self) -> bool:
        return self._listener is not None and self._listener.is_serving()

    async def start_serving(self) -> None:
        if self._listener is not None:
            await self._listener.start_serving()

    async def serve_forever(self) -> None:
        if self._listener is not None:
            await self._listener.serve_forever()

    async def wait_closed(self) -> None:
        if self._listener is not None:
            await self._listener.wait_closed()


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    limits: HttpLimits | None = None,
    on_response: OnResponse | None = None,
    backlog: int = 2048,
    authorize: Authorize | None = None,
) -> HttpServer:
    """Listen on ``host:port`` and serve ``handler`` on the running loop.

    Args:
        handler: Called synchronously on the event loop for each complete request; returns a
            Response or a Future resolved later (by the batcher).
        host: Address to bind, e.g. ``"127.0.0.1"``.
        port: Port to bind; 0 picks a free one (see ``server.sockets[0].getsockname()``).
        reuse_port: Set SO_REUSEPORT so several processes share the port.
        limits: Sizes and timeouts; defaults to ``HttpLimits()``.
        on_response: Optional access-log hook called after each response is written.
        backlog: Listen backlog.
        authorize: Optional token check of requests with a body, before the body is read.

    Returns:
        The listening server; stop it with :func:`shutdown`.
    """
    limits = limits if limits is not None else HttpLimits()
    server = HttpServer(handler, limits, on_response, asyncio.get_running_loop(), authorize)
    await server.listen(host, port, reuse_port=reuse_port, backlog=backlog)
    return server


async def shutdown(server: HttpServer, timeout: float = 10.0, idle_grace_s: float = 0.0) -> None:
    """Stop accepting, close idle connections, let in-flight responses finish, then close.

    Connections still busy after ``timeout`` seconds are aborted. With ``idle_grace_s`` > 0,
    idle keep-alive connections (and accepted ones with no request yet) stay open that long and
    a request arriving meanwhile is answered with ``Connection: close``: closing them at once
    races with a client sending its next request, which then sees a reset (this matters when
    another server takes over the port, e.g. a zero-downtime update).
    """
    await server.shutdown(timeout, idle_grace_s)


def in_flight(server: HttpServer) -> int:
    """Requests received on ``server`` whose response is not written yet."""
    return server.in_flight
