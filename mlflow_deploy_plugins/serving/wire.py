"""What the serving HTTP layer puts on and reads off the wire: requests and responses as data
(and one request as it is read), the connection limits, and pure functions that encode a response
or read a request's target."""

from __future__ import annotations

import http
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    ExpectationFailed,
    InternalError,
    PayloadTooLarge,
    ServingError,
    Unimplemented,
)
from mlflow_deploy_plugins.serving.settings import ServingSettings

_logger = logging.getLogger(__name__)


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
    #: The HTTP layer checked the bearer token before reading the body (the app need not again).
    authorized: bool = False


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


class Exchange:
    """One request on a connection: what the parser has read of it so far, then, while it waits
    in the connection's queue, the Request, its result (a Response or a Future) and the
    Connection header line its response gets."""

    __slots__ = (
        "url",
        "headers",
        "body",
        "body_parts",
        "body_len",
        "header_bytes",
        "header_stream",
        "header_count",
        "reserved",
        "authorized",
        "in_headers",
        "t0",
        "request",
        "result",
        "conn",
    )

    def __init__(self, t0: float = 0.0):
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = b""
        #: Only when the body comes in several chunks; joined once at the end.
        self.body_parts: list[bytes] | None = None
        self.body_len = 0
        #: Request line + headers as parsed, and as streamed into a header line not yet ended.
        self.header_bytes = 0
        self.header_stream = 0
        self.header_count = 0
        #: Body bytes taken from the server's BodyBudget (released once the body is handed on).
        self.reserved = 0
        #: The token was checked before the body was read (``HttpServer.preflight``).
        self.authorized = False
        self.in_headers = True
        self.t0 = t0
        self.request: Request
        #: A Response, or a results.Pending one.
        self.result: Response | Any
        self.conn: bytes

    def release(self, budget: BodyBudget) -> None:
        """Give the body's bytes back to ``budget`` (the body is handed on, or dropped)."""
        budget.release(self.reserved)
        self.reserved = 0

    def drop_body(self, budget: BodyBudget) -> None:
        """Free the body of a request that will not be handled."""
        self.body, self.body_parts = b"", None
        if self.reserved:
            self.release(budget)


def head_error(
    parser: httptools.HttpRequestParser, headers: dict[str, str], max_body_bytes: int
) -> tuple[ServingError | None, int | None]:
    """What is wrong with a request's line and headers, before its body: ``(error, length)``,
    ``length`` being the declared Content-Length (None when absent)."""
    if parser.should_upgrade() and (
        parser.get_method() == b"CONNECT"
        or "content-length" in headers
        or "transfer-encoding" in headers
    ):
        # llhttp would skip such a body and parse it as the next request: refuse.
        return BadRequest("protocol upgrade not supported"), None
    coding = headers.get("transfer-encoding")
    if coding is not None and coding.replace(" ", "").lower() != "chunked":
        # llhttp reads the chunks and nothing else: a body in "gzip, chunked" would be served
        # as if it were plain (RFC 9112 6.1: an unknown transfer coding gets 501)
        return Unimplemented(f"unsupported Transfer-Encoding {coding[:64]!r}; use chunked"), None
    length = headers.get("content-length")
    if length is not None:
        try:
            length = int(length)
        except ValueError:
            return BadRequest("invalid Content-Length"), None
        if length > max_body_bytes:
            return PayloadTooLarge("request body too large"), None
    expect = headers.get("expect")
    if expect is not None and expect.lower() != "100-continue":
        return ExpectationFailed("unsupported Expect"), None
    return None, length


def too_many_headers(limits: HttpLimits) -> str:
    return f"too many request headers (max_header_count={limits.max_header_count})"


#: Returns a Response, a ``results.Pending`` or an asyncio Future resolving to a Response.
Handler = Callable[[Request], Any]
#: Access-log hook: ``(request, response, seconds from the request's first byte to its write)``.
OnResponse = Callable[[Request, Response, float], None]


#: The settings that are also HTTP limits take their defaults from one place.
_DEFAULTS = ServingSettings()


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits and timeouts; those that are settings default to the settings'."""

    #: Request bodies above this get 413 and the connection is closed.
    max_body_bytes: int = _DEFAULTS.max_body_bytes
    #: Request line + headers above this get 431 and the connection is closed.
    max_header_bytes: int = 64 * 1024
    #: An idle keep-alive connection is closed after this. Longer than the 60 s idle timeout of
    #: the usual load balancers, so they never reuse a connection we are closing.
    keepalive_timeout_s: float = _DEFAULTS.keepalive_timeout_s
    #: From a request's first byte to its last; past it: 408 and close (slow or stalled clients).
    request_timeout_s: float = _DEFAULTS.request_timeout_s
    #: A client that reads none of its responses for this long is disconnected.
    write_timeout_s: float = 30.0
    #: Requests queued on one connection before we stop reading from it.
    max_pipelined: int = 256
    #: A new connection that sends no byte for this long is closed.
    first_request_timeout_s: float = _DEFAULTS.first_request_timeout_s
    #: Open connections; beyond: accepted, answered 503 and closed.
    max_connections: int = _DEFAULTS.max_connections
    #: Body bytes received and not yet handed on, across all connections: a request whose
    #: declared body does not fit in the room left gets 503 before its body is read; a body
    #: that would overflow while it arrives gets 503 and the connection is closed.
    max_inflight_body_bytes: int = _DEFAULTS.max_inflight_body_bytes
    #: Header lines of one request; beyond: 431.
    max_header_count: int = _DEFAULTS.max_header_count

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> HttpLimits:
        """The limits a server with ``settings`` runs with."""
        return cls(
            max_body_bytes=settings.max_body_bytes,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            first_request_timeout_s=settings.first_request_timeout_s,
            max_connections=settings.max_connections,
            max_inflight_body_bytes=settings.max_inflight_body_bytes,
            max_header_count=settings.max_header_count,
        )


#: Freed body bytes after which the allocator is asked to give memory back to the system.
TRIM_AFTER_BYTES = 8 * 1024 * 1024


class BodyBudget:
    """Request body bytes being received across a server's connections, against a cap.

    Bodies are buffered as lists of the chunks the transport read (never a growing bytearray),
    so freeing them frees whole blocks; glibc still keeps freed heap memory for reuse, so once
    enough was freed :meth:`maybe_trim` (called by the server's timer, not per request) asks it
    to return the memory to the system (``malloc_trim``), and a burst leaves no lasting growth.
    """

    __slots__ = ("limit", "in_use", "freed", "_trim")

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.freed = 0
        self._trim = _malloc_trim()

    def release(self, n: int) -> None:
        self.in_use -= n
        self.freed += n

    def maybe_trim(self) -> None:
        if self.freed >= TRIM_AFTER_BYTES:
            self.freed = 0
            if self._trim is not None:
                self._trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (Linux), else None."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# --- response encoding -------------------------------------------------------------------------

# Final statuses only: a handler cannot send 1xx (the protocol sends 100 Continue itself).
_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1"))
    for s in http.HTTPStatus
    if s.value >= 200
}
_NO_BODY_STATUS = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Connection header lines; compared by identity (``is``) on the hot path.
CONN_NONE = b""
CONN_CLOSE = b"Connection: close\r\n"
CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"  # only HTTP/1.0 clients need to be told
METHODS = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")
}
INTERNAL_ERROR_MESSAGE = "internal server error"


def date_line() -> bytes:
    """The ``Date`` header line for now; servers refresh theirs once per tick, not per response."""
    return b"Date: %s\r\n" % formatdate(usegmt=True).encode("latin-1")


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is not None:
        return line
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"invalid response status {status!r}")
    return b"HTTP/1.1 %d Unknown\r\n" % status


# Apps use a handful of content types; the bound keeps a buggy one from growing the cache.
@lru_cache(maxsize=64)
def _content_type_line(content_type: str) -> bytes:
    if "\r" in content_type or "\n" in content_type:
        raise ValueError("CR or LF in content type")
    return b"Content-Type: %s\r\n" % content_type.encode("latin-1")


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    out = []
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"CR or LF in response header {name!r}")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


def render(response: Response, request: Request, conn: bytes, date: bytes) -> bytes:
    """The whole response in one join: status line, headers, body (none for HEAD).

    The server adds Date (``date``, see :func:`date_line`), Content-Type, Content-Length,
    X-Request-Id and ``conn`` (one of ``CONN_NONE``, ``CONN_CLOSE``, ``CONN_KEEP_ALIVE``). A
    response that cannot be encoded (bad status, CR/LF in a header or the content type) is
    logged and replaced by a generic 500.
    """
    try:
        status = response.status
        if status in _NO_BODY_STATUS:  # neither a body nor the headers describing one
            content_type = content_length = body = b""
        else:
            content_type = _content_type_line(response.content_type)
            content_length = b"Content-Length: %d\r\n" % len(response.body)
            body = b"" if request.method == "HEAD" else response.body
        return b"".join(
            (
                _STATUS_LINES.get(status) or _status_line(status),
                date,
                content_type,
                content_length,
                _header_lines(response.headers) if response.headers else b"",
                b"X-Request-Id: ",
                request.request_id.encode("latin-1"),
                b"\r\n",
                conn,
                b"\r\n",
                body,
            )
        )
    except Exception:
        _logger.exception("invalid response (request_id=%s)", request.request_id)
        return render(internal_error(request.request_id), request, conn, date)


# --- error responses ---------------------------------------------------------------------------


def error_response(exc: BaseException, request_id: str) -> Response:
    """The one error response: a ``ServingError`` (or anything shaped like one: ``status``,
    ``to_body()``, ``headers``) keeps its status and body; anything else is a logged, generic 500.

    Used for handler failures and for the HTTP layer's own protocol errors alike.
    """
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
            return internal_error(request_id)
    _logger.error("handler failed (request_id=%s)", request_id, exc_info=exc)
    return internal_error(request_id)


def internal_error(request_id: str) -> Response:
    """A generic 500: the details go to the log, never to the client."""
    return error_response(InternalError(INTERNAL_ERROR_MESSAGE), request_id)


# --- reading requests --------------------------------------------------------------------------


#: Most distinct header names a server remembers (see :func:`remember_header_name`).
MAX_HEADER_NAMES = 512


def remember_header_name(names: dict[bytes, str], raw: bytes) -> str:
    """A raw header name as the lower-cased str the Request's headers are keyed by, kept in
    ``names`` (a server's cache: most requests repeat the same few names) while it has room, so
    a client sending ever new names cannot grow it without bound."""
    key = raw.decode("latin-1").lower()
    if len(names) < MAX_HEADER_NAMES:
        names[raw] = key
    return key


def valid_request_id(value: str) -> bool:
    """Whether a client's X-Request-Id is echoed (printable ASCII, 1-128 chars) or replaced."""
    return 0 < len(value) <= 128 and value.isascii() and value.isprintable()


def format_peer(peer: object) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a transport's ``peername``."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer or "")


def split_url(url: bytes) -> tuple[str, str]:
    """``(percent-decoded path, raw query)`` from an origin-form or absolute-form target.

    Raises:
        httptools.HttpParserInvalidURLError: an absolute-form target that does not parse.
    """
    if url[:1] == b"/":
        raw_path, _, raw_query = url.partition(b"?")
    elif url == b"*":
        raw_path, raw_query = url, b""
    else:
        parsed = httptools.parse_url(url)  # absolute-form
        raw_path, raw_query = parsed.path or b"/", parsed.query or b""
    if b"%" in raw_path:
        raw_path = unquote_to_bytes(raw_path)
    return raw_path.decode("utf-8", "replace"), raw_query.decode("utf-8", "replace")
