"""Floor servers: how fast Python can answer at all on this machine and core (bench_ceiling.py).

``python benchmarks/floor_servers.py KIND ARG PORT``:

- ``httptools REPLY_FILE``: does no work. An asyncio protocol on uvloop with httptools' parser
  (what our runtime and uvicorn's fast path are built on), keep-alive, answering every request
  with one fixed pre-recorded reply: no JSON, no model. The cheapest HTTP/1.1 server in Python;
- ``asgi REPLY_FILE``: the same fixed reply from a raw ASGI app on uvicorn (httptools, uvloop):
  the floor of the stack ``minimal_v2_server.py`` runs on;
- ``bare BUNDLE_DIR``: does the work and nothing else. The same protocol parses MLflow's
  ``dataframe_split`` body with orjson, runs every request that arrived in one loop iteration
  as one onnxruntime call, and writes ``{"predictions": [...]}``. No validation, no schema, no
  limits, no errors, no metrics: an upper bound for a Python server that predicts, not a server
  anyone should run.
"""

from __future__ import annotations

import asyncio
import sys

import httptools


class _Parsing(asyncio.Protocol):
    """A connection that feeds httptools; subclasses answer in its callbacks."""

    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()


def _serve(protocol, port: int) -> None:
    import uvloop

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


async def lifespan(receive, send) -> None:
    """ASGI lifespan: start and stop at once (shared with minimal_v2_server.py)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def httptools_server(reply: bytes, port: int) -> None:

    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(reply)).encode()
        + b"\r\n\r\n"
        + reply
    )

    class Null(_Parsing):
        def on_message_complete(self):
            self.transport.write(response)

    _serve(Null, port)


def bare_server(bundle_dir: str, port: int) -> None:
    import numpy as np
    import onnxruntime as ort
    import orjson

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        f"{bundle_dir}/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    label_name = session.get_outputs()[0].name
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    ready = head + b"14\r\n\r\n" + b'{"ready":true}'
    pending: list = []  # (transport, rows) of the requests read in this loop iteration

    def flush():
        batch = pending[:]
        pending.clear()
        x = np.asarray([row for _, rows in batch for row in rows], dtype=np.float64)
        (labels,) = session.run([label_name], {input_name: x})
        start = 0
        for transport, rows in batch:
            body = orjson.dumps({"predictions": labels[start : start + len(rows)].tolist()})
            start += len(rows)
            transport.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)

    class Bare(_Parsing):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.body = []

        def on_body(self, body):
            self.body.append(body)

        def on_message_complete(self):
            if self.parser.get_method() == b"GET":
                self.transport.write(ready)
                return
            doc = orjson.loads(b"".join(self.body))
            self.body = []
            pending.append((self.transport, doc["dataframe_split"]["data"]))
            if len(pending) == 1:
                asyncio.get_running_loop().call_soon(flush)

    _serve(Bare, port)


def asgi_server(reply: bytes, port: int) -> None:
    import uvicorn

    headers = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        more = scope["method"] == "POST"
        while more:  # read the body, as any server must
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    kind, arg, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "bare":
        bare_server(arg, port)
    else:
        with open(arg, "rb") as f:
            body = f.read()
        {"httptools": httptools_server, "asgi": asgi_server}[kind](body, port)
