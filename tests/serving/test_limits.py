"""Resource limits of the HTTP layer under attack: connection cap, body bytes in flight, header
count, silent connections, the token checked before the body (issue 10). In-process servers."""

# ruff: noqa: F811 (the ``serve`` fixture of test_http is imported, then requested by name)

from __future__ import annotations

import asyncio
import json
import select
import threading

from test_http import get, post, serve, wait_for  # noqa: F401

from mlflow_deploy_plugins.serving.batching import Batcher
from mlflow_deploy_plugins.serving.errors import Unauthorized
from mlflow_deploy_plugins.serving.http import HttpLimits


def limits(**kwargs) -> HttpLimits:
    base = dict(max_body_bytes=1024, keepalive_timeout_s=5.0, request_timeout_s=5.0)
    return HttpLimits(**{**base, **kwargs})


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def test_many_tiny_headers_are_431_naming_the_limit(serve):
    # The attack: 40,000 tiny headers stayed under the byte limit and were answered 200.
    served = serve(limits=limits(max_header_bytes=64 * 1024, max_header_count=100))
    client = served.client()
    client.send(get("/echo", "".join(f"X-{i}: a\r\n" for i in range(500))))
    status, headers, body = client.read_response()
    assert (status, headers["connection"]) == (431, "close")
    assert "max_header_count=100" in error_of(body)
    ok = served.client()
    ok.send(get("/echo", "".join(f"X-{i}: a\r\n" for i in range(99))))
    assert ok.read_response()[0] == 200


def test_a_connection_that_sends_nothing_is_closed_before_the_keepalive_timeout(serve):
    served = serve(limits=limits(keepalive_timeout_s=60.0, first_request_timeout_s=0.2))
    silent = served.client()
    assert silent.closed_by_peer()  # recv blocks up to the client's 5 s timeout otherwise
    used = served.client()  # after a first request, the keep-alive timeout applies
    used.send(get("/echo"))
    assert used.read_response()[0] == 200
    assert not select.select([used.sock], [], [], 0.5)[0]


def test_connections_beyond_the_cap_get_503_when_every_connection_is_busy(serve):
    served = serve(limits=limits(max_connections=2))
    first, second = served.client(), served.client()
    for client in (first, second):  # busy: a request whose body is still coming
        client.send(post("/echo", b"x" * 100)[:-50])
    assert wait_for(lambda: len(served.server.connections) == 2)
    extra = served.client()
    status, headers, body = extra.read_response()
    assert (status, headers["connection"], headers["retry-after"]) == (503, "close", "1")
    assert "max_connections=2" in error_of(body)
    assert extra.closed_by_peer()
    first.send(b"x" * 50)
    assert first.read_response()[0] == 200
    first.close()
    assert wait_for(lambda: len(served.server.connections) == 1)
    again = served.client()
    again.send(get("/echo"))
    assert again.read_response()[0] == 200
    second.send(b"x" * 50)  # the busy one was never touched
    assert second.read_response()[0] == 200


def test_at_the_cap_the_oldest_idle_connection_makes_room(serve):
    # The attack: connections that never send a byte held every slot, so health probes and real
    # clients got 503 until the first-request timeout. Like nginx with idle keep-alive
    # connections, the oldest idle one is closed to make room; busy ones are never touched.
    served = serve(limits=limits(max_connections=3, first_request_timeout_s=60.0))
    silent = served.client()  # oldest, never sends a byte
    kept_alive = served.client()  # idle after a first request
    kept_alive.send(get("/echo"))
    assert kept_alive.read_response()[0] == 200
    busy = served.client()
    busy.send(post("/echo", b"x" * 100)[:-50])
    assert wait_for(lambda: len(served.server.connections) == 3)
    probe = served.client()
    probe.send(get("/echo"))
    assert probe.read_response()[0] == 200
    assert silent.closed_by_peer()
    late = served.client()  # next: the idle keep-alive one, then the probe (now idle too)
    late.send(get("/echo"))
    assert late.read_response()[0] == 200
    assert kept_alive.closed_by_peer()
    busy.send(b"x" * 50)
    assert busy.read_response()[0] == 200
    assert served.server.idle_closed_at_cap == 2


def test_body_bytes_in_flight_are_capped_with_503_and_given_back(serve):
    # The attack: stalled uploads each buffering a large body, memory growing without bound.
    served = serve(limits=limits(max_body_bytes=2048, max_inflight_body_bytes=1500))
    stalled = served.client()
    stalled.send(post("/echo", b"a" * 1000)[:-600])  # 400 of 1000 body bytes sent
    assert wait_for(lambda: served.server.budget.in_use == 400)  # counted as they arrive
    refused = served.client()
    refused.send(post("/echo", b"b" * 1200)[:-1200])  # headers only: refused before its body
    status, headers, body = refused.read_response()
    assert (status, headers["retry-after"]) == (503, "1")
    assert "max_inflight_body_bytes=1500" in error_of(body)
    chunked = served.client()  # chunked bodies are counted as they come
    chunked.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunked.send(b"4b0\r\n" + b"c" * 1200 + b"\r\n")
    assert chunked.read_response()[0] == 503
    small = served.client()  # what fits, and requests without a body, are served
    small.send(post("/echo", b"d" * 100) + get("/echo"))
    assert [small.read_response()[0] for _ in range(2)] == [200, 200]
    stalled.send(b"a" * 600)
    assert stalled.read_response()[0] == 200
    assert wait_for(lambda: served.server.budget.in_use == 0)
    again = served.client()
    again.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    declared_only = served.client()  # a declared body holds nothing until its bytes come
    declared_only.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    again.send(b"e" * 300)
    assert wait_for(lambda: served.server.budget.in_use == 300)
    again.close()  # a stalled upload that goes away gives its bytes back
    assert wait_for(lambda: served.server.budget.in_use == 0)


def authorize(path: str, headers: dict):
    if path == "/open" or headers.get("authorization") == "Bearer right":
        return None
    return Unauthorized("Missing or wrong bearer token")


def test_token_is_checked_before_the_body_and_100_continue(serve):
    # The attack: with a token configured, the body was read (after 100 Continue) before auth.
    served = serve(limits=limits(), authorize=authorize)
    expecting = served.client()
    expecting.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, _ = expecting.read_response()  # a final 401, no 100 Continue first
    assert (status, headers["connection"], headers["www-authenticate"]) == (401, "close", "Bearer")
    blind = served.client()  # a body sent without Expect: 401 and close, body never buffered
    blind.send(post("/echo", b"x" * 1000)[:-900])
    assert blind.read_response()[0] == 401
    assert served.server.budget.in_use == 0
    good = served.client()
    good.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Authorization: Bearer right\r\n\r\n"
    )
    assert good.read_response()[0] == 100
    good.send(b"hello")
    assert good.read_response()[0] == 200
    probe = served.client()  # requests without a body are left to the app
    probe.send(get("/echo") + post("/open", b"x"))
    assert [probe.read_response()[0] for _ in range(2)] == [200, 404]


def test_batcher_offloads_only_large_requests():
    loop_thread = threading.get_ident()
    ran_on = {}

    def run(feed):
        ran_on[len(feed["x"])] = threading.get_ident()
        return [feed["x"] * 2]

    async def main():
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np

        batcher = Batcher(run, max_batch_size=4, offload_rows=8)
        results = {}
        with ThreadPoolExecutor(1) as pool:
            batcher.executor = pool
            done = asyncio.Event()
            for n in (2, 5, 10):
                batcher.submit(
                    {"x": np.arange(n)},
                    n,
                    lambda out, err, n=n: (
                        results.__setitem__(n, out),
                        len(results) == 3 and done.set(),
                    ),
                )
            await asyncio.wait_for(done.wait(), 10)
        return results

    results = asyncio.run(main())
    assert [len(results[n][0]) for n in (2, 5, 10)] == [2, 5, 10]
    assert ran_on[2] == ran_on[5] == loop_thread  # batched / run inline on the loop
    assert ran_on[10] != loop_thread  # offloaded
