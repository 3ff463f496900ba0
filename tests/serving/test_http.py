"""HTTP/1.1 behaviour of the serving runtime's server, over raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from mlflow_deploy_plugins.serving.http import (
    HttpLimits,
    Request,
    Response,
    in_flight,
    shutdown,
    start_server,
)
from mlflow_deploy_plugins.serving.results import Pending, answering_together

#: Pendings of /gather requests not answered yet (the batcher's role in these tests).
_gathered: list[tuple[Pending, str]] = []

LIMITS = HttpLimits(
    max_body_bytes=1024, max_header_bytes=2048, keepalive_timeout_s=5.0, request_timeout_s=5.0
)


class StatusError(Exception):
    """Shaped like the serving error map's exceptions (duck typing)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = [("WWW-Authenticate", "Bearer")]

    def to_body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


def app(request: Request) -> Response | asyncio.Future[Response]:
    """Routes for the tests: sync echo, delayed futures, failures."""
    if request.path == "/echo":
        payload = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode("latin-1"),
            "request_id": request.request_id,
            "remote": request.remote,
            "x-multi": request.headers.get("x-multi"),
        }
        return Response(200, json.dumps(payload).encode(), headers=[("X-Echo", "1")])
    if request.path == "/delay":
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        delay = int(request.query.partition("=")[2] or 0) / 1000
        body = json.dumps({"delay": delay, "request_id": request.request_id}).encode()
        loop.call_later(delay, future.set_result, Response(200, body))
        return future
    if request.path == "/boom":
        raise RuntimeError("secret internal detail")
    if request.path == "/future-status":
        future = asyncio.get_running_loop().create_future()
        future.set_exception(StatusError(422, "column 'age' is missing"))
        return future
    if request.path == "/future-boom":
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(future.set_exception, ValueError("secret internal detail"))
        return future
    if request.path == "/pending":  # answered later, as the batcher does
        pending = Pending()
        body = json.dumps({"request_id": request.request_id}).encode()
        asyncio.get_running_loop().call_later(0.02, pending.set, Response(200, body))
        return pending
    if request.path == "/gather":
        # Held until the n-th arrives, then all answered at once, newest first: for pipelined
        # requests that is while the connection is still parsing the data they came in.
        pending = Pending()
        _gathered.append((pending, request.request_id))
        if len(_gathered) == int(request.query.partition("=")[2]):
            batch = _gathered[::-1]
            _gathered.clear()
            with answering_together():
                for held, rid in batch:
                    held.set(Response(200, json.dumps({"request_id": rid}).encode()))
        return pending
    if request.path == "/bad-header":
        return Response(200, b"{}", headers=[("X-Evil", "a\r\nSet-Cookie: x=1")])
    return Response(404, b'{"error": "not found"}')


class Client:
    """A raw HTTP/1.1 client over one socket, reading responses strictly as framed."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def read_response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head or status < 200 else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed_by_peer(self) -> bool:
        """True when the server closes (EOF or reset) with nothing more to read."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class Served:
    def __init__(
        self, server: asyncio.AbstractServer, loop: asyncio.AbstractEventLoop, clients: list
    ):
        self.server = server
        self.loop = loop
        self.port = server.sockets[0].getsockname()[1]
        self._clients = clients

    def client(self) -> Client:
        client = Client(self.port)
        self._clients.append(client)
        return client


@pytest.fixture(params=["asyncio", "uvloop"])
def serve(request):
    """Start servers on a loop in a background thread: ``serve(handler=app, **start_kwargs)``."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []
    clients: list[Client] = []

    def start(handler=app, port: int = 0, **kwargs) -> Served:
        kwargs.setdefault("limits", LIMITS)
        coro = start_server(handler, "127.0.0.1", port, **kwargs)
        server = asyncio.run_coroutine_threadsafe(coro, loop).result(10)
        servers.append(server)
        return Served(server, loop, clients)

    yield start
    for client in clients:
        client.close()
    for server in servers:
        asyncio.run_coroutine_threadsafe(shutdown(server, timeout=1), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def wait_for(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_keep_alive_two_requests_one_connection(serve):
    client = serve().client()
    for query in ("a=1", "b=2"):
        client.send(get(f"/echo?{query}"))
        status, headers, body = client.read_response()
        assert status == 200
        assert "connection" not in headers
        assert headers["content-type"] == "application/json"
        assert headers["x-echo"] == "1"
        assert "date" in headers
        data = json.loads(body)
        assert (data["method"], data["path"], data["query"]) == ("GET", "/echo", query)
        assert data["remote"].startswith("127.0.0.1:")


def test_request_fields_path_decoded_and_repeated_headers_joined(serve):
    client = serve().client()
    client.send(get("/ec%68o?x=%20y", "X-Multi: a\r\nx-multi: b\r\n"))
    status, _, body = client.read_response()
    data = json.loads(body)
    assert (status, data["path"], data["query"], data["x-multi"]) == (
        200,
        "/echo",
        "x=%20y",
        "a, b",
    )
    client.send(b"GET http://example.com/echo?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    status, _, body = client.read_response()
    assert (status, json.loads(body)["path"], json.loads(body)["query"]) == (200, "/echo", "q=1")


def test_pipelined_responses_in_request_order(serve):
    served = serve()
    client = served.client()
    # The first future resolves 150 ms after the second one and after the sync third.
    client.send(get("/delay?ms=150") + get("/delay?ms=0") + post("/echo", b"third"))
    assert wait_for(lambda: in_flight(served.server) == 3)
    first, second, third = (client.read_response() for _ in range(3))
    assert json.loads(first[2])["delay"] == 0.15
    assert json.loads(second[2])["delay"] == 0
    assert json.loads(third[2])["body"] == "third"
    assert wait_for(lambda: in_flight(served.server) == 0)


def test_pending_responses_answered_later_keep_request_order(serve):
    client = serve().client()
    client.send(get("/pending", "X-Request-Id: a\r\n") + get("/echo", "X-Request-Id: b\r\n"))
    first, second = client.read_response(), client.read_response()
    assert (first[0], json.loads(first[2])["request_id"]) == (200, "a")
    assert (second[0], json.loads(second[2])["request_id"]) == (200, "b")


def test_pending_answered_while_the_connection_parses(serve):
    # The third request's handler answers all three while their bytes are still being
    # parsed (a batch filled by the last one runs at once): nothing is written from inside
    # the parser, and the responses still go out in request order.
    served = serve()
    client = served.client()
    ids = ("r1", "r2", "r3")
    client.send(b"".join(get("/gather?n=3", f"X-Request-Id: {rid}\r\n") for rid in ids))
    got = [json.loads(client.read_response()[2])["request_id"] for _ in ids]
    assert got == list(ids)
    assert wait_for(lambda: in_flight(served.server) == 0)
    client.send(get("/echo"))  # the connection still serves
    assert client.read_response()[0] == 200


def test_answering_together_calls_each_connection_once():
    calls = []

    def other_connection():
        calls.append("other")

    def connection():  # one connection with two requests in the batch
        calls.append("conn")

    first, second, third = Pending(), Pending(), Pending()
    first.then(other_connection)
    second.then(connection)
    third.then(connection)
    with answering_together():
        for pending in (first, second, third):
            pending.set(Response(200))
        assert calls == []  # held until the batch is done
    assert calls == ["other", "conn"]
    first.set(Response(500))  # the first answer wins
    assert first.response.status == 200


def test_chunked_request_body(serve):
    client = serve().client()
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    time.sleep(0.05)  # the body arrives in several reads
    client.send(b"6\r\n world\r\n0\r\n\r\n")
    status, _, body = client.read_response()
    assert status == 200
    assert json.loads(body)["body"] == "hello world"


def test_expect_100_continue(serve):
    client = serve().client()
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    status, _, _ = client.read_response()
    assert status == 100
    client.send(b"data")
    status, _, body = client.read_response()
    assert status == 200
    assert json.loads(body)["body"] == "data"


def test_expect_100_continue_waits_for_earlier_responses(serve):
    client = serve().client()
    expect = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    client.send(get("/delay?ms=100") + expect)
    assert [client.read_response()[0] for _ in range(2)] == [200, 100]
    client.send(b"hi")
    assert client.read_response()[0] == 200


def test_half_closed_client_still_gets_its_responses(serve):
    client = serve().client()
    client.send(get("/delay?ms=50") + get("/echo"))
    client.sock.shutdown(socket.SHUT_WR)
    assert [client.read_response()[0] for _ in range(2)] == [200, 200]
    assert client.closed_by_peer()


def test_expect_100_continue_over_limit_is_413_and_close(serve):
    client = serve().client()
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, body = client.read_response()
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == "request body too large"
    assert client.closed_by_peer()


def test_content_length_over_limit_is_413_and_close(serve):
    client = serve().client()
    client.send(post("/echo", b"x" * 2000))
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (413, "close")
    assert client.closed_by_peer()


def test_chunked_body_over_limit_is_413_and_close(serve):
    client = serve().client()
    chunk = b"300\r\n" + b"y" * 0x300 + b"\r\n"
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3)
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (413, "close")
    assert client.closed_by_peer()


def test_headers_over_limit_is_431(serve):
    client = serve().client()
    client.send(get("/echo", "X-Big: " + "z" * 3000 + "\r\n"))
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (431, "close")


def test_header_line_streamed_without_end_is_431(serve):
    client = serve().client()
    client.send(b"GET /echo HTTP/1.1\r\nX-Big: ")
    time.sleep(0.05)
    client.send(b"z" * 3000)  # never ends: httptools would buffer it for ever
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (431, "close")


def test_malformed_request_line_is_400_and_server_keeps_serving(serve):
    served = serve()
    client = served.client()
    client.send(b"THIS IS NOT HTTP\r\n\r\n")
    status, headers, body = client.read_response()
    assert (status, headers["connection"]) == (400, "close")
    assert json.loads(body)["error"] == "malformed HTTP request"
    assert client.closed_by_peer()
    other = served.client()
    other.send(get("/echo"))
    assert other.read_response()[0] == 200


def test_error_after_pipelined_requests_comes_last(serve):
    client = serve().client()
    client.send(get("/delay?ms=50") + b"BAD REQUEST\r\n\r\n")
    assert client.read_response()[0] == 200
    assert client.read_response()[0] == 400
    assert client.closed_by_peer()


def test_stalled_and_slow_clients_are_timed_out(serve):
    limits = HttpLimits(
        max_body_bytes=1024,
        keepalive_timeout_s=0.3,
        request_timeout_s=0.3,
        first_request_timeout_s=0.3,
    )
    served = serve(limits=limits)
    stalled = served.client()
    stalled.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")  # headers never finished
    slowloris = served.client()
    slowloris.send(b"GET /echo HTTP/1.1\r\n")
    idle = served.client()
    started = time.monotonic()
    for _ in range(6):  # one header line every 100 ms: active, but never done
        slowloris.send(b"X-A: b\r\n")
        time.sleep(0.1)
    status, headers, body = stalled.read_response()
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(body)["error"] == "request timeout"
    assert slowloris.read_response()[0] == 408
    assert idle.closed_by_peer()  # idle keep-alive: closed without a response
    assert time.monotonic() - started < 2.0


def test_http_1_0(serve):
    served = serve()
    client = served.client()
    client.send(b"GET /echo HTTP/1.0\r\n\r\n")
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (200, "close")
    assert client.closed_by_peer()
    client = served.client()
    for _ in range(2):
        client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = client.read_response()
        assert (status, headers["connection"]) == (200, "keep-alive")


def test_head_has_headers_only(serve):
    client = serve().client()
    client.send(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n" + get("/echo"))
    status, headers, body = client.read_response(head=True)
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    status, _, body = client.read_response()  # framing intact: no body was sent for HEAD
    assert status == 200
    assert json.loads(body)["method"] == "GET"


def test_connection_close_is_honoured(serve):
    client = serve().client()
    client.send(get("/echo", "Connection: close\r\n") + get("/echo"))
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (200, "close")
    assert client.closed_by_peer()  # the request pipelined after it is not answered


def test_handler_exception_is_generic_500_and_server_stays_up(serve, caplog):
    client = serve().client()
    client.send(get("/boom", "X-Request-Id: boom-1\r\n"))
    status, headers, body = client.read_response()
    assert status == 500
    # The one error body ({"error": ...}, as every serving error); the id is in the header.
    assert json.loads(body) == {"error": "internal server error"}
    assert headers["x-request-id"] == "boom-1"
    assert b"secret" not in body and b"Traceback" not in body
    assert any("boom-1" in record.getMessage() for record in caplog.records)
    client.send(get("/future-boom"))
    status, _, body = client.read_response()
    assert (status, json.loads(body)["error"]) == (500, "internal server error")
    client.send(get("/bad-header"))  # a response that would inject a header
    assert client.read_response()[0] == 500
    client.send(get("/echo"))
    assert client.read_response()[0] == 200


def test_future_failing_with_status_error_uses_its_status(serve):
    client = serve().client()
    client.send(get("/future-status"))
    status, headers, body = client.read_response()
    assert (status, json.loads(body)) == (422, {"error": "column 'age' is missing"})
    assert headers["www-authenticate"] == "Bearer"


def test_request_id_echoed_or_generated(serve):
    client = serve().client()
    client.send(get("/echo", "X-Request-Id: abc-123\r\n"))
    _, headers, body = client.read_response()
    assert headers["x-request-id"] == json.loads(body)["request_id"] == "abc-123"
    ids = set()
    for extra in ("", "X-Request-Id: " + "x" * 200 + "\r\n", ""):
        client.send(get("/echo", extra))
        _, headers, body = client.read_response()
        assert headers["x-request-id"] == json.loads(body)["request_id"]
        assert 0 < len(headers["x-request-id"]) <= 128
        ids.add(headers["x-request-id"])
    assert len(ids) == 3


def test_upgrade_is_ignored_without_body_and_refused_with_one(serve):
    client = serve().client()
    upgrade = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    client.send(get("/echo", upgrade) + get("/echo"))
    assert client.read_response()[0] == 200
    assert client.read_response()[0] == 200
    client.send(post("/echo", b"smuggled", "Connection: Upgrade\r\nUpgrade: foo\r\n"))
    status, headers, _ = client.read_response()
    assert (status, headers["connection"]) == (400, "close")


def test_reuse_port_two_servers_one_port(serve):
    first = serve(reuse_port=True)
    second = serve(port=first.port, reuse_port=True)
    assert second.port == first.port
    for _ in range(4):
        client = first.client()
        client.send(get("/echo", "Connection: close\r\n"))
        assert client.read_response()[0] == 200


def test_on_response_hook(serve):
    calls = []
    client = serve(
        on_response=lambda req, resp, dt: calls.append((req.path, resp.status, dt))
    ).client()
    client.send(get("/echo") + get("/delay?ms=10"))
    client.read_response()
    client.read_response()
    assert wait_for(lambda: len(calls) == 2)
    assert [c[:2] for c in calls] == [("/echo", 200), ("/delay", 200)]
    assert all(c[2] >= 0 for c in calls)


def test_graceful_shutdown(serve):
    served = serve()
    idle = served.client()
    idle.send(get("/echo"))
    idle.read_response()
    busy = served.client()
    busy.send(get("/delay?ms=200"))
    assert wait_for(lambda: in_flight(served.server) == 1)
    done = asyncio.run_coroutine_threadsafe(shutdown(served.server, timeout=5), served.loop)
    assert idle.closed_by_peer()
    status, headers, _ = busy.read_response()
    assert (status, headers["connection"]) == (200, "close")
    busy.close()
    done.result(5)
    with pytest.raises(ConnectionRefusedError):
        served.client()


def test_bounded_load_every_response_matches_its_request(serve):
    served = serve()
    clients = [served.client() for _ in range(4)]
    for batch in range(10):
        for n, client in enumerate(clients):
            client.send(
                b"".join(
                    get("/delay" if i % 3 == 0 else "/echo", f"X-Request-Id: c{n}-{batch}-{i}\r\n")
                    for i in range(50)
                )
            )
        for n, client in enumerate(clients):
            for i in range(50):
                status, headers, body = client.read_response()
                assert status == 200
                assert (
                    headers["x-request-id"] == json.loads(body)["request_id"] == f"c{n}-{batch}-{i}"
                )
    assert in_flight(served.server) == 0
