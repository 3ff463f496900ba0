"""How far above a minimal uvicorn + onnxruntime V2 server can any Python server get? (issue 10)

Issue 10 asks for our runtime, in its default configuration, to reach 3x the throughput of a
minimal uvicorn + onnxruntime V2 server (1 row, c=32, one core). This script measures that ratio
next to the ceiling any Python server on this machine can reach: servers that do no work at all.

One run, every server pinned to core 0 (``taskset``), ``wrk`` on core 1, same bodies as
``bench_serving.py`` (the StandardScaler + GradientBoosting model, 20 numeric features):

- ``null-httptools``: ``floor_servers.py httptools``: asyncio + uvloop + httptools, answering
  every request with a fixed reply recorded from our runtime (no JSON, no model);
- ``null-asgi``: ``floor_servers.py asgi``: the same fixed reply from a raw ASGI app on uvicorn;
- ``bare``: ``floor_servers.py bare``: the same protocol doing the work and nothing else
  (orjson parse of ``dataframe_split``, one onnxruntime call per loop iteration, orjson reply; no
  validation, limits, errors or metrics): an upper bound for a Python server that predicts;
- ``uvicorn``: ``minimal_v2_server.py`` (the issue's baseline: raw ASGI on uvicorn with httptools,
  uvloop, orjson and onnxruntime; the graph's tensor);
- ``ours``: ``mlflow_deploy_plugins.serving serve BUNDLE`` in its default configuration, with the
  issue's body (``/invocations`` dataframe_split) and with the V2 tensor body the baseline gets.

It prints req/s per server and scenario (best of ``--repeats``), then the ratios to ``uvicorn``.
``null-httptools / uvicorn`` is the highest ratio any server could reach here; ``bare / uvicorn``
the highest a Python server that predicts (batched) plausibly reaches.

Run: ``python benchmarks/bench_ceiling.py [--duration 5] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_serving as bs  # noqa: E402

SCENARIOS = [(1, 1), (1, 8), (1, 32)]  # (rows, connections): 1-row requests, as in the goal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="best of N per scenario")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")

    workdir = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    load_before = os.getloadavg()[0]
    running: list[bs.ManagedServer] = []
    table: dict[tuple[str, str], dict[int, float]] = {}
    try:
        print("training + registering + promoting + bundling ...", flush=True)
        x, _, _, bundle, _ = bs.prepare_model(workdir)
        bodies = bs.write_bodies(x, workdir, bundle.manifest.io.inputs[0].name)
        env = dict(os.environ, PYTHONUNBUFFERED="1")

        def server(name: str, cmd: list[str]) -> bs.ManagedServer:
            port = bs.free_port()
            cmd = [part if part != "PORT" else str(port) for part in cmd]
            log = str(workdir / f"{name}.log")
            return bs.ManagedServer(
                name, name, cmd, env, str(workdir), "/v2/health/ready", port, log, 60
            )

        infer = f"/v2/models/{bundle.manifest.name}/infer"
        ours_cmd = [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve", bundle.path]
        ours_cmd += ["--port", "PORT"]
        # The null servers' reply: our runtime's real answer to the 1-row tensor body.
        recorder = server("record", ours_cmd)
        running.append(recorder)
        recorder.start()
        with open(bodies[("v2-tensor", 1)], "rb") as f:
            status, reply = bs.post(recorder.port, infer, f.read())
        recorder.stop()
        running.remove(recorder)
        assert status == 200, reply
        reply_file = workdir / "reply.json"
        reply_file.write_bytes(reply)
        print(f"fixed reply for the null servers ({len(reply)} bytes): {reply.decode()}")

        plan = [
            ("null-httptools", [sys.executable, str(HERE / "floor_servers.py"), "httptools"]),
            ("null-asgi", [sys.executable, str(HERE / "floor_servers.py"), "asgi"]),
            ("bare", [sys.executable, str(HERE / "floor_servers.py"), "bare", bundle.path]),
            ("uvicorn", [sys.executable, str(HERE / "minimal_v2_server.py"), bundle.path]),
            ("ours", ours_cmd),
        ]
        for name, cmd in plan:
            if name.startswith("null"):
                cmd = [*cmd, str(reply_file), "PORT"]
            elif name != "ours":
                cmd = [*cmd, "PORT"]
            srv = server(name, cmd)
            running.append(srv)
            cold = srv.start()
            print(f"\n== {name}: ready in {cold:.2f} s", flush=True)
            kinds = [("v2-tensor", infer)] if name != "bare" else [("mlflow", "/invocations")]
            if name == "ours":
                kinds.insert(0, ("mlflow", "/invocations"))
            for kind, path in kinds:
                bs.run_wrk(srv.port, path, bodies[(kind, 1)], 8, 1)  # warm-up
                for rows_n, conns in SCENARIOS:
                    scenario = bs.Scenario(f"{rows_n} row c={conns}", rows_n, conns, kind, path)
                    best = 0.0
                    for _ in range(args.repeats):
                        time.sleep(0.3)
                        result = bs.measure(srv, bodies[(kind, rows_n)], scenario, args.duration)
                        if result.errors:
                            raise RuntimeError(f"{name} {kind}: {result.error_detail}")
                        best = max(best, result.rps)
                    table.setdefault((name, kind), {})[conns] = best
                    print(f"   {kind:10s} c={conns:<3d} {best:10,.0f} req/s", flush=True)
            srv.stop()
            running.remove(srv)
    finally:
        for srv in running:
            srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    base = table[("uvicorn", "v2-tensor")]
    header = f"| server (body) | {' | '.join(f'1 row c={c}' for _, c in SCENARIOS)} |"
    lines = [
        f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"{args.duration} s per measurement, best of {args.repeats}",
        "",
        header,
        "|---" * (len(SCENARIOS) + 1) + "|",
    ]
    for (name, kind), by_c in table.items():
        cells = [f"{by_c[c]:,.0f} ({by_c[c] / base[c]:.2f}x)" for _, c in SCENARIOS]
        lines.append(f"| {name} ({kind}) | {' | '.join(cells)} |")
    print("\nreq/s (ratio to uvicorn, the issue's baseline)\n" + "\n".join(lines))
    ceiling = table[("null-httptools", "v2-tensor")][32] / base[32]
    ours = table[("ours", "mlflow")][32] / base[32]
    bare = table[("bare", "mlflow")][32] / base[32]
    print(
        f"\nAt 1 row c=32: ours (/invocations) is {ours:.2f}x the baseline; a Python server "
        f"doing only the work (bare) {bare:.2f}x; a server doing nothing {ceiling:.2f}x."
    )
    print(json.dumps({f"{k[0]} {k[1]}": v for k, v in table.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
