"""One HTTP/1.1 connection: httptools callbacks build each request, the handler runs on the loop
(no task per request), responses go out in request order; 100-continue, limits, flow control."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING

import httptools

from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    HeadersTooLarge,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
)
from mlflow_deploy_plugins.serving.results import Pending, settle
from mlflow_deploy_plugins.serving.wire import (
    CONN_CLOSE,
    CONN_KEEP_ALIVE,
    CONN_NONE,
    CONTINUE,
    INTERNAL_ERROR_MESSAGE,
    METHODS,
    Exchange,
    Request,
    Response,
    error_response,
    format_peer,
    head_error,
    remember_header_name,
    render,
    split_url,
    too_many_headers,
    valid_request_id,
)

if TYPE_CHECKING:
    from mlflow_deploy_plugins.serving.http import HttpServer

_logger = logging.getLogger(__name__)

#: Half-closed connections wait this long for the client's FIN before being aborted.
LINGER_S = 2.0

# Why reading is paused (bits): too many pipelined requests queued, the client not reading, or a
# large read (until the next loop iteration: libuv reads a stream up to 32 times, 8 MiB, per poll).
_PAUSE_PIPELINE, _PAUSE_WRITE, _PAUSE_YIELD = 1, 2, 4
_YIELD_BYTES = 64 * 1024


class _Abort(Exception):
    """Raised from a parser callback to stop parsing once an error response is queued."""


class HttpProtocol(asyncio.Protocol):
    """One connection; ``server`` (an ``HttpServer``) holds what all connections share."""

    __slots__ = (
        "_server",
        "_limits",
        "_handler",
        "_on_response",
        "_header_names",
        "_transport",
        "_parser",
        "_remote",
        "_exchange",
        "_queue",
        "_closed",
        "_no_more",
        "_peer_eof",
        "_lingering",
        "_in_request",
        "_fresh",
        "_parsing",
        "_answered",
        "_continue",
        "_paused",
        "_deadline",
        "_write_deadline",
    )

    def __init__(self, server: HttpServer):
        self._server = server
        # Copied: read per request, one attribute lookup instead of two.
        self._limits = server.limits
        self._handler = server.handler
        self._on_response = server.on_response
        self._header_names = server.header_names
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        #: The request being parsed (or the last one parsed).
        self._exchange = Exchange()
        #: Requests whose responses are not written yet, oldest first.
        self._queue: deque[Exchange] = deque()
        self._closed = False  # transport closing or closed: write nothing more
        self._no_more = False  # a final response is decided: ignore further input
        self._peer_eof = False
        self._lingering = False
        self._in_request = False
        self._fresh = False  # the current request began in the data being parsed
        self._parsing = False  # inside data_received: a Pending set now is flushed after it
        self._answered = False  # a Pending was set while parsing
        self._continue = False  # a 100 Continue waits for earlier responses
        self._paused = 0
        self._deadline = 0.0
        self._write_deadline = 0.0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self._server
        if not server.admit(self, transport):
            self._closed = self._no_more = True
            return
        self._remote = format_peer(transport.get_extra_info("peername"))
        self._deadline = server.now + self._limits.first_request_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._no_more = True
        server = self._server
        server.in_flight -= len(self._queue)
        self._queue.clear()
        self._exchange.drop_body(server.budget)
        server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._no_more:
            return  # draining a connection we are closing
        self._fresh = False
        self._parsing = True
        parser = self._parser
        try:
            while True:
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade as exc:
                    # Upgrade is ignored (served as plain HTTP/1.1): parse what follows it.
                    if self._no_more:
                        return
                    data = data[exc.args[0] :]
                    if data:
                        continue
                except httptools.HttpParserCallbackError as exc:
                    if not self._no_more:  # not one of our own aborts: a bug, not the client's
                        _logger.error("HTTP callback failed", exc_info=exc.__context__ or exc)
                        self._fail(InternalError(INTERNAL_ERROR_MESSAGE))
                    return
                except httptools.HttpParserError:
                    if not self._no_more:
                        self._fail(BadRequest("malformed HTTP request"))
                    return
                break
            exchange = self._exchange
            if exchange.in_headers and not self._fresh:
                # httptools buffers a header line until it ends: bound what a client streams.
                exchange.header_stream += len(data)
                if exchange.header_stream > self._limits.max_header_bytes:
                    self._fail(HeadersTooLarge("request headers too large"))
        finally:
            self._parsing = False
            if self._answered:  # the batcher answered requests of ours while we parsed
                self._answered = False
                if not self._closed:
                    self._flush()
            if len(data) >= _YIELD_BYTES and not self._paused & _PAUSE_YIELD:
                self._pause(_PAUSE_YIELD)
                self._server.loop.call_soon(self._resume, _PAUSE_YIELD)

    def eof_received(self) -> bool:
        self._no_more = True
        if self._queue and not self._closed:
            self._peer_eof = True  # half-closed client: answer what it sent, then close
            return True
        return False

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests, bound the wait.
        self._write_deadline = self._server.now + self._limits.write_timeout_s
        self._pause(_PAUSE_WRITE)

    def resume_writing(self) -> None:
        self._write_deadline = 0.0
        self._resume(_PAUSE_WRITE)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._in_request = self._fresh = True
        self._exchange = Exchange(perf_counter() if self._on_response is not None else 0.0)
        self._deadline = self._server.now + self._limits.request_timeout_s

    def on_url(self, url: bytes) -> None:
        exchange = self._exchange
        exchange.url += url
        exchange.header_bytes += len(url)
        if exchange.header_bytes > self._limits.max_header_bytes:
            self._fail(HeadersTooLarge("request headers too large"))
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._exchange
        exchange.header_bytes += len(name) + len(value)
        exchange.header_count += 1
        if exchange.header_bytes > self._limits.max_header_bytes:
            self._fail(HeadersTooLarge("request headers too large"))
            raise _Abort
        if exchange.header_count > self._limits.max_header_count:
            self._fail(HeadersTooLarge(too_many_headers(self._limits)))
            raise _Abort
        if not exchange.in_headers:
            return  # a chunked body's trailer field: never merged (RFC 9110 6.5.1)
        key = self._header_names.get(name)
        if key is None:
            key = remember_header_name(self._header_names, name)
        text = value.decode("latin-1")
        old = (headers := exchange.headers).setdefault(key, text)
        if old is not text:
            headers[key] = f"{old}, {text}"

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        exchange.in_headers = False
        headers = exchange.headers
        parser = self._parser
        error, length = head_error(parser, headers, self._limits.max_body_bytes)
        if error is None and (length or "transfer-encoding" in headers):
            # Token, and room for the declared body, before any body byte is accepted (or 100
            # Continue sent); the bytes are counted as they arrive (on_body).
            server = self._server
            budget = server.budget
            if server.authorize is not None or budget.in_use + (length or 0) > budget.limit:
                error = server.preflight(exchange, length or 0)
        if error is not None:
            self._fail(error)
            raise _Abort
        if "expect" in headers and parser.get_http_version() != "1.0":
            if self._queue:
                self._continue = True  # after the responses the client is owed first
            else:
                self._transport.write(CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        exchange = self._exchange
        size = exchange.body_len + len(chunk)
        if size > self._limits.max_body_bytes:
            self._fail(PayloadTooLarge("request body too large"))
            raise _Abort
        budget = self._server.budget  # BodyBudget.reserve, inlined: counted as the bytes come
        if budget.in_use + size - exchange.reserved > budget.limit:
            self._fail(self._server.busy_bodies())
            raise _Abort
        budget.in_use += size - exchange.reserved
        exchange.reserved = size
        if exchange.body_len:
            if exchange.body_parts is None:
                exchange.body_parts = [exchange.body]
            exchange.body_parts.append(chunk)
        else:
            exchange.body = chunk
        exchange.body_len = size

    def on_message_complete(self) -> None:
        self._in_request = False
        self._continue = False
        exchange = self._exchange
        parser = self._parser
        server = self._server
        headers = exchange.headers
        try:
            path, query = split_url(exchange.url)
        except httptools.HttpParserInvalidURLError:
            self._fail(BadRequest("malformed request target"))
            raise _Abort from None
        if not parser.should_keep_alive() or server.shutting_down:
            self._no_more = True  # anything pipelined after a closing request is ignored
            conn = CONN_CLOSE
        elif "connection" in headers and parser.get_http_version() == "1.0":
            conn = CONN_KEEP_ALIVE
        else:
            conn = CONN_NONE
        raw_method = parser.get_method()
        method = METHODS.get(raw_method) or raw_method.decode("latin-1")
        rid = headers.get("x-request-id")
        if rid is None or not valid_request_id(rid):
            rid = server.next_request_id()
        parts = exchange.body_parts
        reserved = exchange.reserved
        if reserved:  # Exchange.release, inlined
            budget = server.budget
            budget.in_use -= reserved
            budget.freed += reserved
            exchange.reserved = 0
        request = Request(
            method,
            path,
            query,
            headers,
            b"".join(parts) if parts else exchange.body,
            self._remote,
            rid,
            exchange.authorized,
        )
        try:
            result = self._handler(request)
        except Exception as exc:
            result = error_response(exc, rid)
        if type(result) is not Response and (type(result) is not Pending or result.response):
            result = settle(result, rid)
        queue = self._queue
        if not queue and type(result) is Response:
            self._write(request, result, conn, exchange.t0)
            if not self._lingering:
                self._deadline = server.now + self._limits.keepalive_timeout_s
            return
        exchange.request, exchange.result, exchange.conn = request, result, conn
        queue.append(exchange)
        server.in_flight += 1
        if type(result) is not Response:
            result.then(self._on_answer)
        if len(queue) >= self._limits.max_pipelined:
            self._pause(_PAUSE_PIPELINE)
        self._deadline = 0.0  # waiting on the app, not on the client

    # writing responses, in order

    def _log_response(self, request: Request, response: Response, t0: float) -> None:
        try:
            self._on_response(request, response, perf_counter() - t0)
        except Exception:
            _logger.exception("on_response failed (request_id=%s)", request.request_id)

    def _write(self, request: Request, response: Response, conn: bytes, t0: float) -> None:
        """Fast path: nothing queued ahead of this response."""
        if self._closed:
            return
        self._transport.write(render(response, request, conn, self._server.date_line))
        if self._on_response is not None:
            self._log_response(request, response, t0)
        if conn is CONN_CLOSE:
            self._close_gracefully()

    def _on_answer(self) -> None:
        """A Pending response of ours was set (by the batcher, or a Future's callback)."""
        if self._closed:
            return
        if self._parsing:  # never re-enter the parser's callbacks: flush once parsing ends
            self._answered = True
            return
        self._flush()

    def _flush(self) -> None:
        """Write every response at the head of the queue that is ready, in order."""
        queue = self._queue
        server = self._server
        out = []
        close = False
        while queue:
            exchange = queue[0]
            request, result = exchange.request, exchange.result
            if type(result) is Pending:
                result = result.response
                if result is None:
                    break
            queue.popleft()
            server.in_flight -= 1
            conn = exchange.conn
            if server.shutting_down and not queue and not self._in_request:
                conn = CONN_CLOSE
                self._no_more = True
            out.append(render(result, request, conn, server.date_line))
            if self._on_response is not None:
                self._log_response(request, result, exchange.t0)
            if conn is CONN_CLOSE:
                close = True
                break
        if out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            server.in_flight -= len(queue)
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
            self._transport.write(CONTINUE)
        if not self._in_request:
            self._deadline = server.now + self._limits.keepalive_timeout_s

    # errors, timeouts, closing

    def _fail(self, error: ServingError) -> None:
        """Answer a protocol error after the responses owed before it, then close."""
        if self._no_more:
            return
        self._no_more = True
        self._in_request = self._continue = False
        current = self._exchange
        current.in_headers = False
        current.drop_body(self._server.budget)
        rid = current.headers.get("x-request-id")
        if rid is None or not valid_request_id(rid):
            rid = self._server.next_request_id()
        request = Request("", "", "", current.headers, b"", self._remote, rid)
        response = error_response(error, rid)
        if self._queue:
            failed = Exchange(current.t0)
            failed.request, failed.result, failed.conn = request, response, CONN_CLOSE
            self._queue.append(failed)
            self._server.in_flight += 1
            self._lingering = True  # the backstop below aborts if the app never answers
            self._deadline = self._server.now + self._limits.request_timeout_s
        else:
            self._write(request, response, CONN_CLOSE, current.t0)

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
            self._deadline = self._server.now + LINGER_S
        else:
            self._closed = True
            transport.close()

    def check_deadlines(self, now: float) -> None:
        """Called by the server every tick: time out a stalled request, an idle or lingering
        connection, or a client that reads none of its responses."""
        deadline = self._deadline
        if deadline and deadline <= now:
            self._deadline = 0.0
            if self._closed:
                return
            if self._lingering:
                self.abort()
            elif self._in_request:
                self._fail(RequestTimeout("request timeout"))
            else:
                self.close_if_idle()  # an idle keep-alive connection
        elif self._write_deadline and self._write_deadline <= now:
            self.abort()

    def close_if_idle(self, grace_s: float = 0.0) -> bool:
        """Close the connection if no request is in progress and no response is owed (with
        ``grace_s`` > 0: the sweeper closes it then, unless a request comes first)."""
        if self._closed or self._lingering or self._in_request or self._queue:
            return False
        if grace_s > 0:
            self._deadline = self._server.now + grace_s
            return False
        self._no_more = self._closed = True
        self._transport.close()
        return True

    def begin_shutdown(self, idle_grace_s: float = 0.0) -> None:
        """The server stops: close now if idle (or after ``idle_grace_s``), else after the
        responses owed (they go out with ``Connection: close``)."""
        self.close_if_idle(idle_grace_s)

    def abort(self) -> None:
        """Drop the connection at once (RST), whatever is still owed."""
        self._no_more = self._closed = True
        self._transport.abort()

    # flow control

    def _pause(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self._transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed:
                self._transport.resume_reading()
