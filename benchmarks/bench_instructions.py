"""Instructions per request of the serving runtime's whole request path, measured with callgrind:
deterministic, so it compares two source trees on a shared, noisy machine where req/s cannot.

In one process: the HTTP protocol (``HttpProtocol`` on a fake transport), the real app, the real
batcher and the real onnxruntime session, under uvloop. 32 connections each send one 1-row request
per loop iteration (as ``wrk -c32`` does; ``--conns`` changes it), so requests batch as in
production. The count is taken
twice (320 and 1,920 requests) and the difference divided by 1,600: start-up cancels out. Only
the main thread is counted. Timer work (the server's sweep, once per 0.5 s of wall time) runs
50x slower under callgrind than the requests, so counts move by about 1% with the machine's load:
run the trees side by side, several times.

Run (needs valgrind, and a bundle + bodies from ``bench_serving.py --keep``)::

    python benchmarks/bench_instructions.py WORKDIR TREE [TREE ...] [--body mlflow|tensor|v2] [--conns N]

where WORKDIR holds ``bundle/`` and ``body-*.json`` and each TREE is a checkout holding
``mlflow_deploy_plugins/`` (e.g. ``git worktree add /tmp/base <commit>``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODIES = {"mlflow": "body-mlflow-1.json", "tensor": "body-v2-tensor-1.json", "v2": "body-v2-1.json"}


class _Transport:
    def __init__(self, target: int, done: asyncio.Future):
        self.ok, self.target, self.done = 0, target, done

    def write(self, data: bytes) -> None:
        self.ok += data.count(b"HTTP/1.1 200")
        if self.ok >= self.target and not self.done.done():
            self.done.set_result(None)

    def get_extra_info(self, key):
        return ("127.0.0.1", 5555) if key == "peername" else None

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _drive(workdir: str, kind: str, n: int, conns: int = 32) -> float:
    from mlflow_deploy_plugins.serving import http
    from mlflow_deploy_plugins.serving.app import ServingApp, warm_up
    from mlflow_deploy_plugins.serving.metrics import ServingMetrics
    from mlflow_deploy_plugins.serving.model import ServedModel
    from mlflow_deploy_plugins.serving.settings import ServingSettings

    loop = asyncio.get_running_loop()
    settings = ServingSettings(access_log=False)
    model = ServedModel(f"{workdir}/bundle", intra_op_threads=settings.intra_op_threads)
    app = ServingApp(model, settings, metrics=ServingMetrics(), payload_log=None)
    warm_up(app)
    if hasattr(app, "open_offload"):
        app.open_offload()
    app.ready = True
    try:  # after the architecture pass
        from mlflow_deploy_plugins.serving.protocol import HttpProtocol

        limits = http.HttpLimits.from_settings(settings)
        server = http.HttpServer(app.handle, limits, app.on_response, loop)

        def connect():
            return HttpProtocol(server)
    except ImportError:  # older trees
        state = http._ServerState(app.handle, http.HttpLimits(), app.on_response, loop)

        def connect():
            return http._HttpProtocol(state)

    body = Path(workdir, BODIES[kind]).read_bytes()
    path = b"/invocations" if kind == "mlflow" else f"/v2/models/{model.name}/infer".encode()
    head = b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\nContent-Type: application/json"
    request = head % (path, len(body)) + b"\r\n\r\n" + body
    transport = _Transport(n, loop.create_future())
    protocols = [connect() for _ in range(conns)]
    for protocol in protocols:
        protocol.connection_made(transport)
    gc.collect()
    started = time.process_time()
    for _ in range(n // conns):
        for protocol in protocols:
            protocol.data_received(request)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await transport.done
    return time.process_time() - started


def _child(tree: str, workdir: str, kind: str, n: int, conns: int) -> None:
    sys.path.insert(0, tree)
    import uvloop

    uvloop.run(_drive(workdir, kind, n, conns))


def _instructions(tree: str, workdir: str, kind: str, n: int, conns: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}/cg.%p",
                sys.executable,
                __file__,
                "--child",
                tree,
                workdir,
                kind,
                str(n),
                str(conns),
            ],
            env=dict(os.environ, PYTHONHASHSEED="0"),
            capture_output=True,
            check=True,
        )
        main = next(p for p in Path(out).iterdir() if p.name.endswith("-01"))
        return int(re.search(r"^summary: (\d+)", main.read_text(), re.M).group(1))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--body", choices=sorted(BODIES), default="mlflow")
    parser.add_argument(
        "--conns",
        type=int,
        default=32,
        help="connections sending one request each per loop iteration (wrk -c; 32: batches "
        "of 32 rows, 1: every request alone in its loop iteration)",
    )
    args = parser.parse_args()
    if 320 % args.conns or 1920 % args.conns:
        parser.error("--conns must divide 320 (1, 2, 4, 5, 8, 10, 16, 20, 32, ...)")
    rows = []
    for tree in args.trees:
        low = _instructions(tree, args.workdir, args.body, 320, args.conns)
        high = _instructions(tree, args.workdir, args.body, 1920, args.conns)
        rows.append((tree, (high - low) / 1600))
    base = rows[0][1]
    print(f"{'tree':40s} {'instructions/request':>22s} {'ratio':>7s}")
    for tree, per in rows:
        print(f"{tree:40s} {per:22,.0f} {per / base:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
