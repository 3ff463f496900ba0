"""gRPC vs HTTP V2 on our runtime: throughput, latency, server CPU, cold start and RSS.

One run (issue 16, item 4):

1. the model of ``bench_serving.py`` (StandardScaler + GradientBoosting, 20 numeric features),
   registered, promoted and bundled in a throwaway SQLite store;
2. our runtime pinned to core 0 (``taskset``), started once with ``--grpc-port`` and once without
   (cold start: spawn -> first 200 on ``/v2/health/ready``; RSS of the process after warm-up);
3. on the server with both protocols, the same rows as the ONNX graph's own tensor ([rows, 20]
   FP64): HTTP V2 JSON driven by ``wrk`` (core 1), and gRPC ``ModelInfer`` with
   ``raw_input_contents`` (what tritonclient sends) driven by a Python asyncio gRPC load generator
   (``grpc.aio``, one channel, N concurrent calls; core 1): 1 row at concurrency 32, 100 rows at
   concurrency 8;
4. prints req/s, p50/p99, the server's CPU share and requests per server CPU-second, and the
   gRPC/HTTP ratios. The Python client is slower than wrk: where it cannot saturate the server
   (CPU share well below 100%), requests per server CPU-second is the figure to compare.

Run: ``python benchmarks/bench_grpc.py [--duration 10]``; the client alone:
``python benchmarks/bench_grpc.py --client PORT ROWS CONCURRENCY SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_logger = logging.getLogger("bench_grpc")
SCENARIOS = [(1, 32), (100, 8)]


# ------------------------------------------------------------------------ the gRPC load generator
def grpc_client(port: int, rows: int, concurrency: int, seconds: float) -> dict:
    """Drive ``ModelInfer`` with ``concurrency`` calls in flight for ``seconds``."""
    import grpc
    import numpy as np

    from mlflow_deploy_plugins.serving.grpc_schema import MESSAGES

    request_class, response_class = MESSAGES["ModelInferRequest"], MESSAGES["ModelInferResponse"]
    rng = np.random.default_rng(0)
    request = request_class(model_name=os.environ["BENCH_MODEL"])
    request.inputs.add(name=os.environ["BENCH_INPUT"], datatype="FP64", shape=[rows, 20])
    request.raw_input_contents.append(rng.normal(size=(rows, 20)).astype(np.float64).tobytes())
    payload = request.SerializeToString()

    async def main() -> dict:
        latencies: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda raw: raw,  # sent as it is: the client's work is I/O
                response_deserializer=response_class.FromString,
            )
            await infer(payload)  # warm the channel
            deadline = time.perf_counter() + seconds

            async def worker():
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        await infer(payload)
                    except grpc.RpcError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        latencies.sort()
        return {
            "requests": len(latencies),
            "rps": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "errors": errors,
        }

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(main())


def run_grpc_client(port: int, rows: int, concurrency: int, seconds: float, env: dict) -> dict:
    from bench_serving import WRK_CORE

    command = ["taskset", "-c", WRK_CORE, sys.executable, __file__, "--client"]
    command += [str(port), str(rows), str(concurrency), str(seconds)]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"gRPC client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ the run
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--client", nargs=4, metavar=("PORT", "ROWS", "CONC", "SECONDS"))
    args = parser.parse_args()
    if args.client:
        port, rows, concurrency, seconds = args.client
        print(json.dumps(grpc_client(int(port), int(rows), int(concurrency), float(seconds))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from bench_serving import (
        ManagedServer,
        free_port,
        prepare_model,
        render_text,
        run_wrk,
        tree_cpu_s,
        write_bodies,
    )

    workdir = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    x, _, _, bundle, _ = prepare_model(workdir)
    tensor_input = bundle.manifest.io.inputs[0].name
    bodies = write_bodies(x, workdir, tensor_input)
    env = dict(os.environ, BENCH_MODEL=bundle.manifest.name, BENCH_INPUT=tensor_input)
    base = [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve", bundle.path]

    def server(grpc_port: int | None) -> ManagedServer:
        port = free_port()
        flags = ["--port", str(port), "--no-access-log"]
        if grpc_port:
            flags += ["--grpc-port", str(grpc_port)]
        label = "with gRPC" if grpc_port else "HTTP only"
        return ManagedServer(
            label, label, [*base, *flags], env, str(workdir), "/v2/health/ready", port,
            str(workdir / f"{label}.log"), 60,
        )  # fmt: skip

    rows_out = [["server", "cold start (median of 3)", "RSS warm MiB"]]
    for grpc_port in (None, free_port()):
        starts, rss = [], 0.0
        for _ in range(3):
            managed = server(grpc_port)
            starts.append(managed.start())
            time.sleep(0.5)
            rss = managed.rss()[0]
            managed.stop()
        rows_out.append([managed.name, f"{statistics.median(starts):.3f} s", f"{rss:.1f}"])

    grpc_port = free_port()
    managed = server(grpc_port)
    managed.start()
    table = [
        ["scenario", "protocol", "req/s", "p50 ms", "p99 ms", "server CPU", "req/CPU-s", "errors"]
    ]
    ratios = [["scenario", "gRPC / HTTP req/s", "gRPC / HTTP req/CPU-s"]]
    try:
        for rows, concurrency in SCENARIOS:
            found = {}
            for protocol in ("HTTP V2 JSON", "gRPC raw"):
                cpu0, t0 = tree_cpu_s(managed.proc.pid), time.perf_counter()
                if protocol.startswith("HTTP"):
                    body = bodies[("v2-tensor", rows)]
                    path = f"/v2/models/{bundle.manifest.name}/infer"
                    raw = run_wrk(managed.port, path, body, concurrency, int(args.duration))
                    result = {
                        "rps": raw["rps"],
                        "p50_ms": raw["p50_us"] / 1000,
                        "p99_ms": raw["p99_us"] / 1000,
                        "errors": sum(raw[k] for k in ("connect", "read", "write", "status")),
                    }
                else:
                    result = run_grpc_client(grpc_port, rows, concurrency, args.duration, env)
                share = (tree_cpu_s(managed.proc.pid) - cpu0) / (time.perf_counter() - t0)
                result["per_cpu"] = result["rps"] / share if share else 0.0
                found[protocol] = result
                table.append(
                    [
                        f"{rows} row(s) c={concurrency}",
                        protocol,
                        f"{result['rps']:,.0f}",
                        f"{result['p50_ms']:.2f}",
                        f"{result['p99_ms']:.2f}",
                        f"{share:.0%}",
                        f"{result['per_cpu']:,.0f}",
                        str(result["errors"]),
                    ]
                )
            http, grpc_ = found["HTTP V2 JSON"], found["gRPC raw"]
            ratios.append(
                [
                    f"{rows} row(s) c={concurrency}",
                    f"{grpc_['rps'] / http['rps']:.2f}",
                    f"{grpc_['per_cpu'] / http['per_cpu']:.2f}",
                ]
            )
    finally:
        managed.stop()
    print(render_text(rows_out))
    print(render_text(table))
    print(render_text(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
