"""HTTP/1.1 server that owns the serving hot path: ``asyncio.Protocol`` + the httptools parser.

One protocol per connection parses requests, calls the handler synchronously on the event loop
(no task per request) and writes responses strictly in request order (pipelining).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import logging
import secrets
import socket
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from time import perf_counter
from urllib.parse import unquote_to_bytes

import httptools

_logger = logging.getLogger(__name__)

__all__ = [
    "Handler",
    "HttpLimits",
    "OnResponse",
    "Request",
    "Response",
    "event_loop_factory",
    "in_flight",
    "install_uvloop",
    "shutdown",
    "start_server",
]


@dataclass(slots=True)
class Request:
    """One parsed HTTP request, as handed to the handler."""

    method: str  # "GET", "POST", ...
    path: str  # without the query string, percent-decoded
    query: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    remote: str  # "127.0.0.1:54321"
    request_id: str  # X-Request-Id from the client, else generated


@dataclass(slots=True)
class Response:
    """What a handler returns (status 200-599).

    The server adds Date, Content-Type, Content-Length, X-Request-Id and Connection; ``headers``
    holds any others (CR or LF in them is refused with a 500).
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], "Response | asyncio.Future[Response]"]
#: Access-log hook: ``(request, response, seconds from the request's first byte to its write)``.
OnResponse = Callable[[Request, Response, float], None]


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits and timeouts."""

    #: Request bodies above this get 413 and the connection is closed.
    max_body_bytes: int = 8 * 1024 * 1024
    #: Request line + headers above this get 431 and the connection is closed.
    max_header_bytes: int = 64 * 1024
    #: An idle keep-alive connection is closed after this. Longer than the 60 s idle timeout of
    #: the usual load balancers, so they never reuse a connection we are closing.
    keepalive_timeout_s: float = 75.0
    #: From a request's first byte to its last; past it: 408 and close (slow or stalled clients).
    request_timeout_s: float = 30.0
    #: A client that reads none of its responses for this long is disconnected.
    write_timeout_s: float = 30.0
    #: Requests queued on one connection before we stop reading from it.
    max_pipelined: int = 256


# --- response encoding -------------------------------------------------------------------------

# Final statuses only: a handler cannot send 1xx (the protocol sends 100 Continue itself).
_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1"))
    for s in http.HTTPStatus
    if s.value >= 200
}
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONN_NONE = b""
_CONN_CLOSE = b"Connection: close\r\n"
_CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"  # only HTTP/1.0 clients need to be told
_CTYPE_LINES: dict[str, bytes] = {}
_date_line = b"Date: %s\r\n" % formatdate(usegmt=True).encode("latin-1")
_METHODS = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
}
#: Raw header name -> lower-cased str: most requests repeat the same few names.
_HEADER_NAMES: dict[bytes, str] = {}
#: Half-closed connections wait this long for the client's FIN before being aborted.
_LINGER_S = 2.0


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is not None:
        return line
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"invalid response status {status!r}")
    return b"HTTP/1.1 %d Unknown\r\n" % status


def _ctype_line(content_type: str) -> bytes:
    line = _CTYPE_LINES.get(content_type)
    if line is None:
        if "\r" in content_type or "\n" in content_type:
            raise ValueError("CR or LF in content type")
        line = b"Content-Type: %s\r\n" % content_type.encode("latin-1")
        if len(_CTYPE_LINES) < 64:  # apps use a handful; never grow without bound
            _CTYPE_LINES[content_type] = line
    return line


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    out = []
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"CR or LF in response header {name!r}")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


def _encode(response: Response, request_id: str, head: bool, conn: bytes) -> bytes:
    """The whole response in one join: status line, headers, body (not for HEAD)."""
    status = response.status
    body = response.body
    extra = _header_lines(response.headers) if response.headers else b""
    if status in _NO_BODY_STATUS:
        return b"".join(
            (
                _status_line(status),
                _date_line,
                extra,
                b"X-Request-Id: ",
                request_id.encode("latin-1"),
                b"\r\n",
                conn,
                b"\r\n",
            )
        )
    return b"".join(
        (
            _status_line(status),
            _date_line,
            _ctype_line(response.content_type),
            b"Content-Length: ",
            str(len(body)).encode("latin-1"),
            b"\r\n",
            extra,
            b"X-Request-Id: ",
            request_id.encode("latin-1"),
            b"\r\n",
            conn,
            b"\r\n",
            b"" if head else body,
        )
    )


def _error_body(message: str, request_id: str) -> bytes:
    return json.dumps({"error": message, "request_id": request_id}).encode()


def _internal_error(request_id: str) -> Response:
    return Response(status=500, body=_error_body("internal server error", request_id))


def _error_response(exc: BaseException, request_id: str) -> Response:
    """Map a handler failure: the serving error map (duck-typed) keeps its status, else 500."""
    status = getattr(exc, "status", None)
    to_body = getattr(exc, "to_body", None)
    if type(status) is int and 400 <= status <= 599 and callable(to_body):
        try:
            body = to_body()
            if isinstance(body, str):
                body = body.encode()
            headers = getattr(exc, "headers", None)  # e.g. WWW-Authenticate for a 401
            return Response(status=status, body=body, headers=list(headers or ()))
        except Exception:
            _logger.exception("error body failed (request_id=%s)", request_id)
            return _internal_error(request_id)
    _logger.error("handler failed (request_id=%s)", request_id, exc_info=exc)
    return _internal_error(request_id)


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable()


def _format_peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "")


def _split_url(url: bytes) -> tuple[str, str]:
    """``(percent-decoded path, raw query)`` from an origin-form or absolute-form target."""
    if url[:1] == b"/":
        raw_path, _, raw_query = url.partition(b"?")
    elif url == b"*":
        raw_path, raw_query = url, b""
    else:
        parsed = httptools.parse_url(url)  # absolute-form; raises HttpParserInvalidURLError
        raw_path, raw_query = parsed.path or b"/", parsed.query or b""
    if b"%" in raw_path:
        raw_path = unquote_to_bytes(raw_path)
    return raw_path.decode("utf-8", "replace"), raw_query.decode("utf-8", "replace")


class _Abort(Exception):
    """Raised from a parser callback to stop parsing once an error response is queued."""


# --- server state ------------------------------------------------------------------------------


class _ServerState:
    """What one listening server shares with its connections, plus the timeout sweeper."""

    def __init__(
        self,
        handler: Handler,
        limits: HttpLimits,
        on_response: OnResponse | None,
        loop: asyncio.AbstractEventLoop,
    ):
        self.handler = handler
        self.limits = limits
        self.on_response = on_response
        self.loop = loop
        self.connections: set[_HttpProtocol] = set()
        self.in_flight = 0
        self.shutting_down = False
        self.drained: asyncio.Future[None] | None = None
        self.server_ref: weakref.ref[asyncio.AbstractServer] | None = None
        # A coarse clock (refreshed every tick) is enough for deadlines and costs nothing.
        self.now = loop.time()
        self._rid_prefix = secrets.token_hex(4) + "-"
        self._rid_counter = itertools.count(1)
        shortest = min(limits.keepalive_timeout_s, limits.request_timeout_s, limits.write_timeout_s)
        self._tick = max(0.01, min(1.0, shortest / 4, _LINGER_S / 4))
        self._timer: asyncio.TimerHandle | None = loop.call_later(self._tick, self._sweep)

    def next_request_id(self) -> str:
        return self._rid_prefix + str(next(self._rid_counter))

    def _sweep(self) -> None:
        global _date_line
        self.now = now = self.loop.time()
        _date_line = b"Date: %s\r\n" % formatdate(usegmt=True).encode("latin-1")
        for conn in list(self.connections):
            deadline = conn._deadline
            if deadline and deadline <= now:
                conn._on_deadline()
            elif conn._write_deadline and conn._write_deadline <= now:
                conn._abort()
        server = self.server_ref() if self.server_ref is not None else None
        if self.connections or (server is not None and server.is_serving()):
            self._timer = self.loop.call_later(self._tick, self._sweep)
        else:
            self._timer = None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_closed(self, conn: _HttpProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


_STATES: weakref.WeakKeyDictionary[asyncio.AbstractServer, _ServerState] = (
    weakref.WeakKeyDictionary()
)

_PAUSE_PIPELINE = 1
_PAUSE_WRITE = 2


# --- the protocol ------------------------------------------------------------------------------


class _HttpProtocol(asyncio.Protocol):
    """One connection: httptools callbacks build a Request, the queue keeps responses in order."""

    __slots__ = (
        "_state",
        "_limits",
        "_handler",
        "_on_response",
        "_transport",
        "_parser",
        "_remote",
        "_queue",
        "_closed",
        "_no_more",
        "_peer_eof",
        "_lingering",
        "_in_request",
        "_in_headers",
        "_fresh",
        "_continue",
        "_paused",
        "_deadline",
        "_write_deadline",
        "_url",
        "_headers",
        "_body",
        "_body_parts",
        "_body_len",
        "_hdr_bytes",
        "_hdr_stream",
        "_t0",
    )

    def __init__(self, state: _ServerState):
        self._state = state
        self._limits = state.limits
        self._handler = state.handler
        self._on_response = state.on_response
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        # (request, Response or Future, connection header, t0), oldest first
        self._queue: deque[tuple[Request, Response | asyncio.Future[Response], bytes, float]] = (
            deque()
        )
        self._closed = False  # transport closing or closed: write nothing more
        self._no_more = False  # a final response is decided: ignore further input
        self._peer_eof = False
        self._lingering = False
        self._in_request = False
        self._in_headers = False
        self._fresh = False
        self._continue = False  # a 100 Continue waits for earlier responses
        self._paused = 0
        self._deadline = 0.0
        self._write_deadline = 0.0
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = b""
        self._body_parts: list[bytes] | None = None
        self._body_len = 0
        self._hdr_bytes = 0
        self._hdr_stream = 0
        self._t0 = 0.0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._remote = _format_peer(transport.get_extra_info("peername"))
        state = self._state
        state.connections.add(self)
        self._deadline = state.now + self._limits.keepalive_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._no_more = True
        state = self._state
        state.in_flight -= len(self._queue)
        self._queue.clear()
        state.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._no_more:
            return  # draining a connection we are closing
        self._fresh = False
        parser = self._parser
        while True:
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                # Upgrade is ignored (served as plain HTTP/1.1): parse what follows the request.
                if self._no_more:
                    return
                data = data[exc.args[0] :]
                if data:
                    continue
            except httptools.HttpParserCallbackError as exc:
                if not self._no_more:  # not one of our own aborts: a bug, not the client's fault
                    _logger.error("HTTP callback failed", exc_info=exc.__context__ or exc)
                    self._fail(500, "internal server error")
                return
            except httptools.HttpParserError:
                if not self._no_more:
                    self._fail(400, "malformed HTTP request")
                return
            break
        if self._in_headers and not self._fresh:
            # httptools buffers a header line until it ends: bound what a client streams into it.
            self._hdr_stream += len(data)
            if self._hdr_stream > self._limits.max_header_bytes:
                self._fail(431, "request headers too large")

    def eof_received(self) -> bool:
        self._no_more = True
        if self._queue and not self._closed:
            self._peer_eof = True  # half-closed client: answer what it sent, then close
            return True
        return False

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests, bound the wait.
        self._write_deadline = self._state.now + self._limits.write_timeout_s
        self._pause(_PAUSE_WRITE)

    def resume_writing(self) -> None:
        self._write_deadline = 0.0
        self._resume(_PAUSE_WRITE)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_request = self._in_headers = self._fresh = True
        self._url = b""
        self._headers = {}
        self._body = b""
        self._body_parts = None
        self._body_len = self._hdr_bytes = self._hdr_stream = 0
        self._deadline = self._state.now + self._limits.request_timeout_s
        if self._on_response is not None:
            self._t0 = perf_counter()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hdr_bytes += len(url)
        if self._hdr_bytes > self._limits.max_header_bytes:
            self._fail(431, "request headers too large")
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hdr_bytes += len(name) + len(value)
        if self._hdr_bytes > self._limits.max_header_bytes:
            self._fail(431, "request headers too large")
            raise _Abort
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < 512:  # a client must not grow it without bound
                _HEADER_NAMES[name] = key
        text = value.decode("latin-1")
        old = self._headers.setdefault(key, text)
        if old is not text:
            self._headers[key] = f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._in_headers = False
        headers = self._headers
        parser = self._parser
        if parser.should_upgrade() and (
            parser.get_method() == b"CONNECT"
            or "content-length" in headers
            or "transfer-encoding" in headers
        ):
            # llhttp would skip such a body and parse it as the next request: refuse.
            self._fail(400, "protocol upgrade not supported")
            raise _Abort
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self._limits.max_body_bytes
            except ValueError:
                self._fail(400, "invalid Content-Length")
                raise _Abort from None
            if too_large:
                self._fail(413, "request body too large")
                raise _Abort
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                self._fail(417, "unsupported Expect")
                raise _Abort
            if parser.get_http_version() != "1.0":
                if self._queue:
                    self._continue = True  # after the responses the client is owed first
                else:
                    self._transport.write(_CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        size = self._body_len + len(chunk)
        if size > self._limits.max_body_bytes:
            self._fail(413, "request body too large")
            raise _Abort
        if self._body_len:
            if self._body_parts is None:
                self._body_parts = [self._body]
            self._body_parts.append(chunk)
        else:
            self._body = chunk
        self._body_len = size

    def on_message_complete(self) -> None:
        self._in_request = False
        self._continue = False
        parser = self._parser
        state = self._state
        headers = self._headers
        try:
            path, query = _split_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._fail(400, "malformed request target")
            raise _Abort from None
        if not parser.should_keep_alive() or state.shutting_down:
            self._no_more = True  # anything pipelined after a closing request is ignored
            conn = _CONN_CLOSE
        elif "connection" in headers and parser.get_http_version() == "1.0":
            conn = _CONN_KEEP_ALIVE
        else:
            conn = _CONN_NONE
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        rid = headers.get("x-request-id")
        if rid is None or not _valid_request_id(rid):
            rid = state.next_request_id()
        parts = self._body_parts
        request = Request(
            method,
            path,
            query,
            headers,
            b"".join(parts) if parts else self._body,
            self._remote,
            rid,
        )
        try:
            result = self._handler(request)
        except Exception as exc:
            result = _error_response(exc, rid)
        if type(result) is not Response:
            result = self._check_result(result, rid)
        queue = self._queue
        if not queue and type(result) is Response:
            self._write(request, result, conn, self._t0)
            if not self._lingering:
                self._deadline = state.now + self._limits.keepalive_timeout_s
            return
        queue.append((request, result, conn, self._t0))
        state.in_flight += 1
        if type(result) is not Response:
            result.add_done_callback(self._on_future_done)
        if len(queue) >= self._limits.max_pipelined:
            self._pause(_PAUSE_PIPELINE)
        self._deadline = 0.0  # waiting on the app, not on the client

    # internals

    def _check_result(self, result: object, rid: str) -> Response | asyncio.Future[Response]:
        if isinstance(result, asyncio.Future):
            return self._resolve(result, rid) if result.done() else result
        if isinstance(result, Response):
            return result
        _logger.error("handler returned %s, not a Response (request_id=%s)", type(result), rid)
        return _internal_error(rid)

    def _resolve(self, future: asyncio.Future[Response], rid: str) -> Response:
        if future.cancelled():
            return Response(status=503, body=_error_body("service unavailable", rid))
        exc = future.exception()
        if exc is not None:
            return _error_response(exc, rid)
        result = future.result()
        if isinstance(result, Response):
            return result
        _logger.error("handler future gave %s, not a Response (request_id=%s)", type(result), rid)
        return _internal_error(rid)

    def _render(self, request: Request, response: Response, conn: bytes) -> bytes:
        try:
            return _encode(response, request.request_id, request.method == "HEAD", conn)
        except Exception:
            _logger.exception("invalid response (request_id=%s)", request.request_id)
            return _encode(_internal_error(request.request_id), request.request_id, False, conn)

    def _log_response(self, request: Request, response: Response, t0: float) -> None:
        try:
            self._on_response(request, response, perf_counter() - t0)
        except Exception:
            _logger.exception("on_response failed (request_id=%s)", request.request_id)

    def _write(self, request: Request, response: Response, conn: bytes, t0: float) -> None:
        """Fast path: nothing queued ahead of this response."""
        if self._closed:
            return
        self._transport.write(self._render(request, response, conn))
        if self._on_response is not None:
            self._log_response(request, response, t0)
        if conn is _CONN_CLOSE:
            self._close_gracefully()

    def _on_future_done(self, future: asyncio.Future[Response]) -> None:
        if self._closed:
            if not future.cancelled():
                future.exception()  # retrieved: no "exception was never retrieved" noise
            return
        self._flush()

    def _flush(self) -> None:
        """Write every response at the head of the queue that is ready, in order."""
        queue = self._queue
        state = self._state
        out = []
        close = False
        while queue:
            request, result, conn, t0 = queue[0]
            if type(result) is not Response:
                if not result.done():
                    break
                result = self._resolve(result, request.request_id)
            queue.popleft()
            state.in_flight -= 1
            if state.shutting_down and not queue and not self._in_request:
                conn = _CONN_CLOSE
                self._no_more = True
            out.append(self._render(request, result, conn))
            if self._on_response is not None:
                self._log_response(request, result, t0)
            if conn is _CONN_CLOSE:
                close = True
                break
        if out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            state.in_flight -= len(queue)
            queue.clear()
            self._close_gracefully()
            return
        if queue:
            if self._paused & _PAUSE_PIPELINE and len(queue) < self._limits.max_pipelined:
                self._resume(_PAUSE_PIPELINE)
            return
        if self._peer_eof:
            self._closed = True
            self._transport.close()
            return
        self._resume(_PAUSE_PIPELINE)
        if self._continue:
            self._continue = False
            self._transport.write(_CONTINUE)
        if not self._in_request:
            self._deadline = state.now + self._limits.keepalive_timeout_s

    def _fail(self, status: int, message: str) -> None:
        """Answer a protocol error after the responses owed before it, then close."""
        if self._no_more:
            return
        self._no_more = True
        self._in_request = self._in_headers = False
        self._continue = False
        rid = self._headers.get("x-request-id")
        if rid is None or not _valid_request_id(rid):
            rid = self._state.next_request_id()
        request = Request("", "", "", self._headers, b"", self._remote, rid)
        response = Response(status=status, body=_error_body(message, rid))
        if self._queue:
            self._queue.append((request, response, _CONN_CLOSE, self._t0))
            self._state.in_flight += 1
            self._lingering = True  # the backstop below aborts if the app never answers
            self._deadline = self._state.now + self._limits.request_timeout_s
        else:
            self._write(request, response, _CONN_CLOSE, self._t0)

    def _close_gracefully(self) -> None:
        # Half-close, then drain until the client closes: closing with unread input makes the
        # kernel send RST, which can destroy the response before the client reads it.
        self._no_more = self._lingering = True
        transport = self._transport
        if self._closed or transport.is_closing():
            return
        if self._peer_eof:  # the client already closed its side: nothing left to drain
            self._closed = True
            transport.close()
            return
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            self._deadline = self._state.now + _LINGER_S
        else:
            self._closed = True
            transport.close()

    def _on_deadline(self) -> None:
        self._deadline = 0.0
        if self._closed:
            return
        if self._lingering:
            self._abort()
        elif self._in_request:
            self._fail(408, "request timeout")
        elif not self._queue:
            self._no_more = self._closed = True  # idle keep-alive connection
            self._transport.close()

    def _on_shutdown(self, idle_grace_s: float = 0.0) -> None:
        if self._closed or self._lingering:
            return
        if not self._in_request and not self._queue:
            if idle_grace_s > 0:  # the sweeper closes it then, unless a request comes first
                self._deadline = self._state.now + idle_grace_s
                return
            self._no_more = self._closed = True
            self._transport.close()

    def _abort(self) -> None:
        self._no_more = self._closed = True
        self._transport.abort()

    def _pause(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self._transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed:
                self._transport.resume_reading()


# --- public helpers ----------------------------------------------------------------------------


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    limits: HttpLimits | None = None,
    on_response: OnResponse | None = None,
    backlog: int = 2048,
) -> asyncio.AbstractServer:
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

    Returns:
        The listening server; stop it with :func:`shutdown`.
    """
    limits = limits if limits is not None else HttpLimits()
    loop = asyncio.get_running_loop()
    state = _ServerState(handler, limits, on_response, loop)
    try:
        server = await loop.create_server(
            lambda: _HttpProtocol(state), host, port, reuse_port=reuse_port, backlog=backlog
        )
    except BaseException:
        state.stop()
        raise
    state.server_ref = weakref.ref(server)
    _STATES[server] = state
    return server


async def shutdown(
    server: asyncio.AbstractServer, timeout: float = 10.0, idle_grace_s: float = 0.0
) -> None:
    """Stop accepting, close idle connections, let in-flight responses finish, then close.

    Connections still busy after ``timeout`` seconds are aborted. With ``idle_grace_s`` > 0,
    idle keep-alive connections (and accepted ones with no request yet) stay open that long and
    a request arriving meanwhile is answered with ``Connection: close``: closing them at once
    races with a client sending its next request, which then sees a reset (this matters when
    another server takes over the port, e.g. a zero-downtime update).
    """
    server.close()
    state = _STATES.pop(server, None)
    if state is not None:
        state.shutting_down = True
        state.drained = state.loop.create_future()
        for conn in list(state.connections):
            conn._on_shutdown(idle_grace_s)
        if state.connections:
            try:
                await asyncio.wait_for(asyncio.shield(state.drained), timeout)
            except asyncio.TimeoutError:
                _logger.warning("aborting %d connections at shutdown", len(state.connections))
                for conn in list(state.connections):
                    conn._abort()
                await asyncio.sleep(0)  # let connection_lost run
        state.stop()
    await server.wait_closed()


def in_flight(server: asyncio.AbstractServer | None = None) -> int:
    """Requests received whose response is not written yet, for one server or all of them."""
    if server is not None:
        state = _STATES.get(server)
        return state.in_flight if state is not None else 0
    return sum(state.in_flight for state in list(_STATES.values()))


def install_uvloop() -> bool:
    """Make uvloop the event loop policy if it is installed; return whether it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """``uvloop.new_event_loop`` when installed, else ``asyncio.new_event_loop``.

    For ``asyncio.Runner(loop_factory=...)``, which avoids the (deprecated) policy machinery.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
