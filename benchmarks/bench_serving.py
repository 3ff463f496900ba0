"""Serving throughput, latency, cold start and RSS: ours vs `mlflow models serve` vs MLServer.

One run on this machine (issue 3, "Benchmark"):

1. trains StandardScaler + GradientBoostingClassifier (100 trees, 20 numeric features), logs and
   registers it as ``bench`` v1 in a throwaway SQLite store (mlflow.sklearn, skops), promotes it
   (``bench-onnx@champion``) and builds our serving bundle from the promoted twin;
2. starts, one at a time and each pinned to core 0 with ``taskset``:
   ``mlflow models serve`` (1 worker), MLServer 1.7.1 + mlserver-mlflow (its own venv, created if
   missing), MLServer + our MLServer runtime (``--servers mlserver-onnx``: this venv, with the
   ``mlserver`` extra) and our runtime (``python -m mlflow_deploy_plugins.serving``);
3. per server: cold start (spawn -> first 200 on its readiness endpoint), RSS of the whole process
   tree after warm-up, then ``wrk`` pinned to core 1 (Lua script for POST bodies): 1-row requests at
   concurrency 1, 8, 32 and 100-row requests at concurrency 8. MLflow scoring protocol
   (``/invocations``, dataframe_split) for mlflow serve; V2 JSON (one 1-D input per column) for
   MLServer and for ours; ours also /invocations at c=32, and TF Serving's REST API
   (``/v1/models/{name}:predict``, row format) at 1 row c=32 and 100 rows c=8 beside V2 with the
   same graph tensor (issue 16);
4. prints the table, the ratios of ours to each baseline and the issue's goals.

Every server is stopped (process group) on exit, errors and Ctrl-C. Only 127.0.0.1 is used.

Run: ``python benchmarks/bench_serving.py [--duration 10] [--quick]``
(MLServer's venv: ``--mlserver-venv PATH`` > ``$MLSERVER_VENV`` > ``benchmarks/.venv-mlserver``.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA_SCRIPT = HERE / "wrk" / "post.lua"
DEFAULT_MLSERVER_VENV = HERE / ".venv-mlserver"
MLSERVER_REQUIREMENTS = [
    "mlserver==1.7.1",
    "mlserver-mlflow==1.7.1",
    "mlflow>=3.3,<4",
    "uvloop<0.22",  # MLServer's inference workers crash with uvloop 0.23
    "pandas<3",
    "scikit-learn",
]
TRAIN_ROWS = 5000
MODEL_NAME = "bench"
SERVER_CORE = "0"
WRK_CORE = "1"
MIB = 1024 * 1024

# The goals (ours against `mlflow models serve`, same core, same run).
GOAL_C32_THROUGHPUT_X = 250.0
GOAL_C32_P99_DIVISOR = 100.0
GOAL_C1_P50_MS = 0.3
GOAL_100ROW_THROUGHPUT_X = 15.0
GOAL_COLD_START_S = 0.6
GOAL_RSS_MIB = 100.0
#: Issue 13: MLServer + our runtime against MLServer + mlserver-mlflow, 1 row c=32.
GOAL_MLSERVER_ONNX_X = 10.0

_logger = logging.getLogger("bench_serving")


# ---------------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class Scenario:
    key: str  # "1 row c=32": comparable across servers (extra rows carry a suffix)
    rows: int
    connections: int
    body: str  # "mlflow" (dataframe_split), "v2" (one 1-D input per column), "v2-tensor",
    # "tfserving" (TF Serving REST row format: one list of the tensor's values per instance)
    path: str = ""
    extra: bool = False  # an additional row for one server, not compared

    def at(self, path: str, body: str | None = None, suffix: str = "") -> Scenario:
        return Scenario(
            self.key + suffix, self.rows, self.connections, body or self.body, path, bool(suffix)
        )


@dataclass
class Result:
    server: str
    scenario: str
    protocol: str
    rows: int
    connections: int
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    errors: int = 0
    error_detail: dict = field(default_factory=dict)
    extra: bool = False
    cpu_share: float = float("nan")  # server CPU seconds / wall seconds (1.0 = the whole core)
    duration_s: float = 0.0

    @property
    def per_cpu_s(self) -> float:
        """Requests per CPU-second of the server: less sensitive to other load on the core."""
        cpu = self.cpu_share * self.duration_s
        return self.requests / cpu if cpu > 0 else float("nan")


@dataclass
class ServerReport:
    name: str
    label: str
    cold_starts_s: list[float] = field(default_factory=list)
    rss_warm_mib: float = float("nan")
    rss_after_mib: float = float("nan")
    processes: int = 0
    process_rss: list = field(default_factory=list)  # (pid, cmdline, MiB) after warm-up
    verified: str = ""
    results: list[Result] = field(default_factory=list)

    @property
    def cold_start_s(self) -> float:
        return statistics.median(self.cold_starts_s) if self.cold_starts_s else float("nan")


BASE_SCENARIOS = [
    Scenario("1 row c=1", 1, 1, ""),
    Scenario("1 row c=8", 1, 8, ""),
    Scenario("1 row c=32", 1, 32, ""),
    Scenario("100 rows c=8", 100, 8, ""),
]


# ---------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces/parens, split after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = _ppid_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


def tree_rss(pid: int) -> list[tuple[int, str, float]]:
    """(pid, command, VmRSS MiB) for ``pid`` and all its descendants."""
    out = []
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                status = f.read()
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out.append((p, cmdline[:100], int(line.split()[1]) / 1024))
                break
    return out


class ManagedServer:
    """One server process group: start, wait for readiness, measure, stop (always)."""

    def __init__(
        self,
        key: str,
        name: str,
        cmd: list[str],
        env: dict,
        cwd: str,
        ready_path: str,
        port: int,
        log_path: str,
        ready_timeout_s: float,
    ):
        self.key = key
        self.name = name
        self.cmd = ["taskset", "-c", SERVER_CORE, *cmd]
        self.env = env
        self.cwd = cwd
        self.ready_path = ready_path
        self.port = port
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Spawn and poll readiness; returns the cold start in seconds."""
        with open(self.log_path, "ab") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() kills the whole tree
            )
        deadline = t0 + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            if _get_status(self.port, self.ready_path) == 200:
                return time.perf_counter() - t0
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{self.name} not ready after {self.ready_timeout_s:.0f} s; log tail:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.002)

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # Collect the tree first: a child that left the group (setsid) is still ours.
        pids = process_tree(proc.pid) if proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _logger.warning("%s did not stop within %.0f s: SIGKILL", self.name, timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def rss(self) -> tuple[float, list[tuple[int, str, float]]]:
        """Sum of VmRSS over the process tree in MiB, and the per-process breakdown."""
        assert self.proc is not None
        tree = tree_rss(self.proc.pid)
        return sum(mib for *_, mib in tree), tree

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


def _get_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, content_type: str = "application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------- wrk
def run_wrk(
    port: int, path: str, body_file: str, connections: int, duration_s: int, timeout_s: int = 30
) -> dict:
    cmd = [
        "taskset",
        "-c",
        WRK_CORE,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}{path}",
    ]
    env = dict(os.environ, BENCH_BODY_FILE=body_file, BENCH_CONTENT_TYPE="application/json")
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 30
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def measure(server: ManagedServer, body_file: str, scenario: Scenario, duration_s: int) -> Result:
    cpu0, t0 = tree_cpu_s(server.proc.pid), time.perf_counter()
    raw = run_wrk(server.port, scenario.path, body_file, scenario.connections, duration_s)
    cpu_share = (tree_cpu_s(server.proc.pid) - cpu0) / (time.perf_counter() - t0)
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return Result(
        server=server.key,
        scenario=scenario.key,
        protocol=f"{scenario.body} {scenario.path}",
        rows=scenario.rows,
        connections=scenario.connections,
        requests=raw["requests"],
        rps=raw["rps"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=sum(errors.values()),
        error_detail=errors,
        extra=scenario.extra,
        cpu_share=cpu_share,
        duration_s=raw["duration_s"],
    )


# ---------------------------------------------------------------------------------- model
def prepare_model(workdir: Path):
    """Train, log/register (skops), promote, build the bundle; returns (features df, bundle)."""
    import mlflow
    from _models import log_registered, scaler_gradient_boosting

    from mlflow_deploy_plugins import build_bundle, promote

    x, model = scaler_gradient_boosting(TRAIN_ROWS)
    log_registered(model, x.head(3), MODEL_NAME)
    promoted = promote(MODEL_NAME, 1, "champion", sample=x.head(1000))
    bundle = build_bundle(promoted.model_uri, str(workdir / "bundle"))
    source_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL_NAME}/1", dst_path=str(workdir / "source-model")
    )
    return x, model, promoted, bundle, source_dir


def write_bodies(x, workdir: Path, tensor_input: str) -> dict[tuple[str, int], str]:
    """Request bodies, the same rows for every server: (body kind, rows) -> file path."""
    bodies = {}
    for rows in (1, 100):
        batch = x.head(rows)
        columns = list(batch.columns)
        data = batch.to_numpy().tolist()
        kinds = {
            "mlflow": {"dataframe_split": {"columns": columns, "data": data}},
            # One 1-D input per column of the model's table schema (MLServer and ours accept
            # it); MLServer's MLflow runtime needs the pandas content type to build a DataFrame.
            "v2": {
                "parameters": {"content_type": "pd"},
                "inputs": [
                    {
                        "name": c,
                        "shape": [rows],
                        "datatype": "FP64",
                        "data": batch[c].astype(float).tolist(),
                    }
                    for c in columns
                ],
            },
            # The ONNX graph's own tensor (ours only): one [rows, 20] FP64 input.
            "v2-tensor": {
                "inputs": [
                    {
                        "name": tensor_input,
                        "shape": [rows, len(columns)],
                        "datatype": "FP64",
                        "data": [v for row in data for v in row],
                    }
                ],
            },
            # TF Serving's REST API, row format: the same [rows, 20] tensor (ours only).
            "tfserving": {"instances": data},
        }
        for kind, body in kinds.items():
            path = workdir / f"body-{kind}-{rows}.json"
            path.write_text(json.dumps(body))
            bodies[(kind, rows)] = str(path)
    return bodies


def first_prediction(body_kind: str, payload: bytes):
    doc = json.loads(payload)
    if body_kind == "mlflow":
        preds = doc["predictions"]
        return preds[0] if isinstance(preds, list) else next(iter(preds.values()))[0]
    if body_kind == "tfserving":
        return doc["predictions"][0]
    outputs = doc["outputs"]
    return {o["name"]: o["data"][0] for o in outputs}


# ---------------------------------------------------------------------------------- MLServer venv
def ensure_mlserver_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(
            f"Creating MLServer venv at {venv} (pip install {' '.join(MLSERVER_REQUIREMENTS)})",
            flush=True,
        )
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *MLSERVER_REQUIREMENTS], check=True
        )
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import mlserver, mlserver_mlflow, mlflow, uvloop; "
            "print(mlserver.__version__, mlflow.__version__, uvloop.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"MLServer venv {venv} is broken:\n{probe.stderr}")
    mls, mlf, uvl = probe.stdout.split()
    if mls != "1.7.1":
        print(f"warning: MLServer venv has mlserver {mls}, expected 1.7.1", file=sys.stderr)
    print(f"MLServer venv: {venv} (mlserver {mls}, mlflow {mlf}, uvloop {uvl})")
    return venv


# ---------------------------------------------------------------------------------- servers
def server_specs(
    args, workdir: Path, tracking_uri: str, bundle, source_dir: str, mlserver_venv: Path | None
) -> dict[str, tuple[str, object, list[Scenario]]]:
    """name -> (label, factory() -> ManagedServer, scenarios with their paths and bodies)."""
    venv_bin = str(Path(sys.executable).parent)
    base_env = dict(os.environ)
    base_env["PATH"] = venv_bin + os.pathsep + base_env.get("PATH", "")
    specs = {}

    def mlflow_serve():
        port = free_port()
        env = dict(base_env, MLFLOW_TRACKING_URI=tracking_uri)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{MODEL_NAME}/1",
            "--env-manager",
            "local",
            "-w",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        return ManagedServer(
            "mlflow",
            "mlflow serve",
            cmd,
            env,
            str(workdir),
            "/ping",
            port,
            str(workdir / "mlflow-serve.log"),
            180,
        )

    specs["mlflow"] = (
        "mlflow models serve (1 worker)",
        mlflow_serve,
        [s.at("/invocations", "mlflow") for s in BASE_SCENARIOS],
    )

    def mlserver_server(name: str, label: str, model: dict, command: list[str], env: dict):
        """MLServer serving one model (``model``: its model-settings.json) with the settings
        both MLServer rows share."""
        port = free_port()
        repo = workdir / name
        (repo / MODEL_NAME).mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": args.mlserver_parallel_workers,
            "debug": False,  # no access log, INFO logging (as ours with --no-access-log)
        }
        if args.mlserver_defaults:  # what each one's users get without tuning
            if name == "mlserver":
                del settings["parallel_workers"], settings["debug"]
            else:
                settings["parallel_workers"] = 0
        if name == "mlserver-onnx":
            settings["metrics_endpoint"] = None  # the mlserver target's default
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        model_settings = {"name": MODEL_NAME, **model}
        (repo / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
        return ManagedServer(
            name,
            label,
            [*command, "start", str(repo)],
            env,
            str(repo),
            "/v2/health/ready",
            port,
            str(workdir / f"{name}.log"),
            180,
        )

    pw = args.mlserver_parallel_workers
    v2_scenarios = [s.at(f"/v2/models/{MODEL_NAME}/infer", "v2") for s in BASE_SCENARIOS]
    if mlserver_venv is not None:

        def mlserver():
            env = {k: v for k, v in base_env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
            env["PATH"] = str(mlserver_venv / "bin") + os.pathsep + os.environ.get("PATH", "")
            model = {
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": source_dir},
            }
            command = [str(mlserver_venv / "bin" / "mlserver")]
            return mlserver_server("mlserver", "MLServer", model, command, env)

        specs["mlserver"] = (
            "MLServer 1.7.1 + mlserver-mlflow ("
            + ("MLServer's defaults" if args.mlserver_defaults else f"parallel_workers={pw}")
            + ")",
            mlserver,
            v2_scenarios,
        )

    def mlserver_onnx():
        # MLServer + our runtime, from this venv (it has MLServer: the mlserver extra)
        model = {
            "implementation": "mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime",
            "parameters": {"uri": bundle.path},
        }
        command = [sys.executable, "-c", "from mlserver.cli import main; main()"]
        return mlserver_server("mlserver-onnx", "MLServer + ours", model, command, dict(base_env))

    specs["mlserver-onnx"] = (
        "MLServer 1.7.1 + mlflow_deploy_plugins.mlserver_runtime (parallel_workers="
        f"{0 if args.mlserver_defaults else pw}, no metrics endpoint)",
        mlserver_onnx,
        v2_scenarios,
    )

    def runtime(name: str, env: dict, extra: tuple[str, ...] = ()):
        def start():
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "mlflow_deploy_plugins.serving",
                "serve",
                bundle.path,
                "--port",
                str(port),
                *([] if args.default_config else ["--no-access-log"]),
                *extra,
            ]
            return v2_server(name, cmd, env, port)

        return start

    def v2_server(name: str, cmd: list[str], env: dict, port: int) -> ManagedServer:
        """A server answering /v2/health/ready, logging to WORKDIR/NAME.log, ready within 60 s."""
        log = str(workdir / f"{name}.log")
        return ManagedServer(name, name, cmd, env, str(workdir), "/v2/health/ready", port, log, 60)

    ours = runtime("ours", dict(base_env))

    def minimal(name: str, script: str):
        def start():
            port = free_port()
            cmd = [sys.executable, str(HERE / script), bundle.path, str(port)]
            return v2_server(name, cmd, dict(base_env), port)

        return start

    infer = f"/v2/models/{bundle.manifest.name}/infer"
    by_key = {s.key: s for s in BASE_SCENARIOS}
    ours_scenarios = [s.at(infer, "v2") for s in BASE_SCENARIOS]
    ours_scenarios.append(by_key["1 row c=32"].at("/invocations", "mlflow", " /invocations"))
    if not args.no_tensor_rows:
        for key in ("1 row c=1", "1 row c=32", "100 rows c=8"):
            ours_scenarios.append(by_key[key].at(infer, "v2-tensor", " V2 tensor"))
    if not args.no_tfserving_rows:
        predict = f"/v1/models/{bundle.manifest.name}:predict"
        for key in ("1 row c=32", "100 rows c=8"):
            ours_scenarios.append(by_key[key].at(predict, "tfserving", " TF Serving REST"))
    specs["ours"] = ("ours (mlflow_deploy_plugins.serving)", ours, ours_scenarios)
    specs["uvicorn"] = (
        "uvicorn + onnxruntime + orjson, a minimal V2 server (the graph's tensor)",
        minimal("uvicorn", "minimal_v2_server.py"),
        [s.at(infer, "v2-tensor") for s in BASE_SCENARIOS],
    )
    specs["fastapi"] = (
        "FastAPI + pydantic + onnxruntime on uvicorn, a V2 server (the graph's tensor)",
        minimal("fastapi", "fastapi_v2_server.py"),
        [s.at(infer, "v2-tensor") for s in BASE_SCENARIOS],
    )
    if args.baseline_tree:
        # The same runtime from another source tree (e.g. a checkout of the previous release),
        # imported first through PYTHONPATH: before/after a change, measured in one run.
        tree = str(Path(args.baseline_tree).resolve())
        env = dict(base_env, PYTHONPATH=tree + os.pathsep + base_env.get("PYTHONPATH", ""))
        extra = tuple(args.baseline_flags.split()) if args.baseline_flags else ()
        label = f"ours from {tree} {' '.join(extra)}".rstrip()
        specs["baseline"] = (label, runtime("baseline", env, extra), ours_scenarios)
    return specs


def bench_server(name: str, spec, bodies, args, reports: dict, running: list) -> ServerReport:
    label, factory, scenarios = spec
    report = ServerReport(name, label)
    reports[name] = report
    print(f"\n== {label}", flush=True)
    # Extra cold starts first (start, ready, stop), then the start that is measured under load.
    server = None
    for i in range(args.cold_starts):
        server = factory()
        running.append(server)
        try:
            cold = server.start()
        except BaseException:
            server.stop()
            running.remove(server)
            raise
        report.cold_starts_s.append(cold)
        print(f"   cold start #{i + 1}: {cold:.3f} s", flush=True)
        if i < args.cold_starts - 1:
            server.stop()
            running.remove(server)
    try:
        # Verify once per path and body kind: a 200 with a prediction.
        for path, kind in dict.fromkeys((s.path, s.body) for s in scenarios):
            with open(bodies[(kind, 1)], "rb") as f:
                status, payload = post(server.port, path, f.read())
            if status != 200:
                raise RuntimeError(f"{name} {path}: HTTP {status}: {payload[:500]!r}")
            pred = first_prediction(kind, payload)
            report.verified += f"{path} ({kind}) -> {pred}; "
            print(f"   verified {path} ({kind}): 200, prediction {pred}", flush=True)
        # Warm-up: a short burst at c=8 with the first scenario's 1-row body, then RSS.
        run_wrk(server.port, scenarios[0].path, bodies[(scenarios[0].body, 1)], 8, args.warmup)
        report.rss_warm_mib, report.process_rss = server.rss()
        report.processes = len(report.process_rss)
        print(
            f"   RSS after warm-up: {report.rss_warm_mib:.1f} MiB ({report.processes} processes)",
            flush=True,
        )
        for pid, cmdline, mib in report.process_rss:
            print(f"      {mib:7.1f} MiB  pid {pid}: {cmdline}", flush=True)
        for scenario in scenarios:
            result = None
            for _ in range(args.repeats):  # best of N: other load on the core only slows down
                time.sleep(0.5)
                run = measure(
                    server, bodies[(scenario.body, scenario.rows)], scenario, args.duration
                )
                if args.repeats > 1:
                    print(
                        f"      ({scenario.key}: {run.rps:.1f} req/s, p99 {run.p99_ms:.3f} ms, "
                        f"server CPU {run.cpu_share:.0%})",
                        flush=True,
                    )
                if result is None or run.rps > result.rps:
                    result = run
            report.results.append(result)
            print(
                f"   {scenario.key:<26}{result.rps:>11.1f} req/s  p50 {result.p50_ms:8.3f} ms"
                f"  p99 {result.p99_ms:9.3f} ms  errors {result.errors}"
                f"  server CPU {result.cpu_share:4.0%}  {result.per_cpu_s:8.0f} req/CPU-s"
                f"{' ' + str(result.error_detail) if result.errors else ''}",
                flush=True,
            )
            if server.proc is None or server.proc.poll() is not None:
                raise RuntimeError(f"{name} died during {scenario.key}:\n{server.log_tail()}")
        report.rss_after_mib, _ = server.rss()
    finally:
        server.stop()
        if server in running:
            running.remove(server)
    return report


# ---------------------------------------------------------------------------------- reporting
def _fmt_ms(v: float) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def build_tables(reports: dict[str, ServerReport]) -> dict[str, list[list[str]]]:
    tables = {}
    rows = []
    for rep in reports.values():
        for r in rep.results:
            rows.append(
                [
                    rep.name,
                    r.scenario,
                    f"{r.rps:,.1f}",
                    _fmt_ms(r.p50_ms),
                    _fmt_ms(r.p99_ms),
                    str(r.errors),
                    f"{r.cpu_share:.0%}",
                    f"{r.per_cpu_s:,.0f}",
                ]
            )
    tables["load"] = [
        ["server", "scenario", "req/s", "p50 ms", "p99 ms", "errors", "server CPU", "req/CPU-s"],
        *rows,
    ]

    tables["servers"] = [
        [
            "server",
            "cold start s (median)",
            "cold starts s",
            "RSS MiB warm",
            "RSS MiB after load",
            "processes",
        ]
    ] + [
        [
            rep.name,
            f"{rep.cold_start_s:.3f}",
            " ".join(f"{c:.2f}" for c in rep.cold_starts_s),
            f"{rep.rss_warm_mib:.1f}",
            f"{rep.rss_after_mib:.1f}",
            str(rep.processes),
        ]
        for rep in reports.values()
    ]

    ours = reports.get("ours")
    ratio_rows = []
    if ours is not None:
        for base_name, base in reports.items():
            if base_name == "ours":
                continue
            by_key = {r.scenario: r for r in base.results}
            for r in ours.results:
                # The same scenario when the baseline ran it (our runtime from another tree);
                # else extra rows ("1 row c=32 V2 tensor") are compared with the base scenario.
                key = r.scenario if r.scenario in by_key else None
                key = key or next((k for k in by_key if r.scenario.startswith(k)), None)
                if key is None:
                    continue
                b = by_key[key]
                tput = r.rps / b.rps if b.rps else float("inf")
                p99 = b.p99_ms / r.p99_ms if r.p99_ms else float("inf")
                eff = r.per_cpu_s / b.per_cpu_s if b.per_cpu_s else float("nan")
                ratio_rows.append(
                    [
                        f"ours / {base_name}",
                        r.scenario,
                        f"{tput:,.1f}x",
                        f"1/{p99:,.1f}",
                        f"{eff:,.1f}x",
                    ]
                )
            ratio_rows.append(
                [
                    f"ours / {base_name}",
                    "cold start",
                    f"{base.cold_start_s / ours.cold_start_s:,.1f}x faster",
                    "",
                    "",
                ]
            )
            ratio_rows.append(
                [
                    f"ours / {base_name}",
                    "RSS",
                    f"1/{base.rss_warm_mib / ours.rss_warm_mib:,.1f}",
                    "",
                    "",
                ]
            )
    ratio_rows += mlserver_ratio_rows(reports)
    tables["ratios"] = [
        ["ratio", "scenario", "throughput", "p99", "req/CPU-s"],
        *ratio_rows,
    ]
    tables["goals"] = [
        ["goal (issue 3)", "measured", "met", "with the V2 tensor body", "met"],
        *goal_rows(reports),
    ]
    return tables


def mlserver_ratio_rows(reports: dict[str, ServerReport]) -> list[list[str]]:
    """MLServer + our runtime / MLServer + mlserver-mlflow, per scenario (issue 13's goal: at
    least GOAL_MLSERVER_ONNX_X at 1 row c=32)."""
    ours, base = reports.get("mlserver-onnx"), reports.get("mlserver")
    if ours is None or base is None:
        return []
    by_key = {r.scenario: r for r in base.results}
    rows = []
    for r in ours.results:
        b = by_key.get(r.scenario)
        if b is None or not b.rps:
            continue
        goal = ""
        if r.scenario == "1 row c=32":
            met = r.rps / b.rps >= GOAL_MLSERVER_ONNX_X
            goal = f" (goal >= {GOAL_MLSERVER_ONNX_X:.0f}x: {'met' if met else 'NOT met'})"
        rows.append(
            [
                "mlserver-onnx / mlserver",
                r.scenario,
                f"{r.rps / b.rps:,.1f}x{goal}",
                f"1/{b.p99_ms / r.p99_ms:,.1f}" if r.p99_ms else "",
                f"{r.per_cpu_s / b.per_cpu_s:,.1f}x" if b.per_cpu_s else "",
            ]
        )
    return rows


def goal_rows(reports: dict[str, ServerReport]) -> list[list[str]]:
    """[goal, measured (V2 per-column body), met, measured with the V2 tensor body, met]."""
    ours, base = reports.get("ours"), reports.get("mlflow")
    if ours is None:
        return []
    o = {r.scenario: r for r in ours.results}
    b = {r.scenario: r for r in base.results} if base else {}
    rows = []

    def yes(ok):
        return "" if ok is None else "yes" if ok else "NO"

    def add(text, key, value_of, goal_of):
        cells = [text]
        for k in (key, f"{key} V2 tensor"):
            if key is not None and k not in o:
                cells += ["-", ""]
                continue
            value, ok = value_of(o.get(k)), goal_of(o.get(k))
            cells += [value, yes(ok)]
        rows.append(cells)

    if "1 row c=32" in b:
        base32 = b["1 row c=32"]
        add(
            f"1 row c=32 throughput >= {GOAL_C32_THROUGHPUT_X:.0f}x mlflow serve",
            "1 row c=32",
            lambda r: f"{r.rps / base32.rps:,.1f}x ({r.per_cpu_s / base32.per_cpu_s:,.0f}x/CPU-s)",
            lambda r: r.rps / base32.rps >= GOAL_C32_THROUGHPUT_X,
        )
        add(
            f"1 row c=32 p99 <= 1/{GOAL_C32_P99_DIVISOR:.0f} of mlflow serve's",
            "1 row c=32",
            lambda r: f"1/{base32.p99_ms / r.p99_ms:,.1f} ({_fmt_ms(r.p99_ms)} ms)",
            lambda r: base32.p99_ms / r.p99_ms >= GOAL_C32_P99_DIVISOR,
        )
    add(
        f"1 row c=1 p50 < {GOAL_C1_P50_MS} ms",
        "1 row c=1",
        lambda r: f"{r.p50_ms:.3f} ms",
        lambda r: r.p50_ms < GOAL_C1_P50_MS,
    )
    if "100 rows c=8" in b:
        base100 = b["100 rows c=8"]
        add(
            f"100 rows c=8 throughput >= {GOAL_100ROW_THROUGHPUT_X:.0f}x mlflow serve",
            "100 rows c=8",
            lambda r: (
                f"{r.rps / base100.rps:,.1f}x ({r.per_cpu_s / base100.per_cpu_s:,.0f}x/CPU-s)"
            ),
            lambda r: r.rps / base100.rps >= GOAL_100ROW_THROUGHPUT_X,
        )
    cold, rss = ours.cold_start_s, ours.rss_warm_mib
    rows.append(
        [f"cold start < {GOAL_COLD_START_S} s", f"{cold:.3f} s", yes(cold < GOAL_COLD_START_S)]
        + ["", ""]
    )
    rows.append(
        [f"RSS < {GOAL_RSS_MIB:.0f} MiB", f"{rss:.1f} MiB", yes(rss < GOAL_RSS_MIB), "", ""]
    )
    return rows


def render_text(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        cells = [
            c.ljust(w) if i < 2 or n == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: list[list[str]]) -> str:
    head, *body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


TITLES = {
    "load": "Load (wrk pinned to core {wrk}; server pinned to core {srv}; {d} s per scenario)",
    "servers": "Cold start (spawn -> first 200 on readiness) and RSS (whole process tree)",
    "ratios": "Ours relative to each baseline (throughput and req/CPU-s: higher is better; "
    "p99: ours = 1/N of theirs; extra rows are compared with the baseline's same rows/concurrency)",
    "goals": "Goals",
}


# ---------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        help="seconds per wrk scenario (default 10; --quick: 3)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s scenarios, 1 s warm-up, one cold start per server"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up seconds (default 2)")
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=None,
        help="cold starts per server, median reported (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per scenario; the one with the most req/s is reported (default 1)",
    )
    parser.add_argument(
        "--servers",
        default="mlflow,mlserver,ours",
        help="comma-separated subset of mlflow,mlserver,mlserver-onnx,uvicorn,fastapi,ours "
        "(uvicorn: a minimal raw-ASGI uvicorn + onnxruntime V2 server; fastapi: the same on "
        "FastAPI + pydantic; mlserver-onnx: MLServer + our runtime, from this venv, which needs "
        "the mlserver extra)",
    )
    parser.add_argument(
        "--mlserver-venv",
        default=None,
        help="venv with MLServer (default $MLSERVER_VENV, else "
        f"{DEFAULT_MLSERVER_VENV.relative_to(HERE.parent)}; created if missing)",
    )
    parser.add_argument(
        "--mlserver-parallel-workers",
        type=int,
        default=0,
        help="MLServer parallel_workers (0: inference in the server process, "
        "its fastest on one core; default 0)",
    )
    parser.add_argument(
        "--mlserver-defaults",
        action="store_true",
        help="each MLServer row in the configuration its users get by default: mlserver-mlflow "
        "with MLServer's own defaults (parallel_workers 1, debug on, metrics endpoint), ours "
        "with what the mlserver target generates (parallel_workers 0, debug off, no metrics "
        "endpoint); --mlserver-parallel-workers is then ignored",
    )
    parser.add_argument(
        "--default-config",
        action="store_true",
        help="run our runtime in its default configuration (errors-only access log) instead of with "
        "--no-access-log",
    )
    parser.add_argument(
        "--baseline-tree",
        default=None,
        help="also run our runtime from this source tree (a checkout holding "
        "mlflow_deploy_plugins/, e.g. `git worktree add /tmp/base HEAD~5`) as the server "
        "'baseline', and report ours / baseline: before vs after a change in one run",
    )
    parser.add_argument(
        "--baseline-flags",
        default="",
        help="extra server flags for the baseline, e.g. --baseline-flags=--no-access-log "
        "with --default-config: the access log's cost in one run",
    )
    parser.add_argument(
        "--no-tensor-rows",
        action="store_true",
        help="skip ours' extra rows with the ONNX tensor as the V2 input",
    )
    parser.add_argument(
        "--no-tfserving-rows",
        action="store_true",
        help="skip ours' extra rows with TF Serving's REST API (:predict, row format)",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write raw results here")
    parser.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, bundle)")
    parser.add_argument(
        "--from-json",
        default=None,
        help="do not measure: print the tables of an earlier --json file (with --markdown)",
    )
    args = parser.parse_args()
    if args.from_json:
        return rerender(args.from_json, args.markdown)
    args.duration = args.duration or (3 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 2)
    args.cold_starts = max(1, args.cold_starts or (1 if args.quick else 3))
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    logging.basicConfig(level=logging.WARNING)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(
                f"{tool} not found (Debian: apt-get install {tool if tool == 'wrk' else 'util-linux'})"
            )
    if (os.cpu_count() or 1) < 2:
        parser.error("needs 2 cores: the server is pinned to core 0 and wrk to core 1")

    # SIGTERM behaves like Ctrl-C: the finally blocks stop every server.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    running: list[ManagedServer] = []
    reports: dict[str, ServerReport] = {}
    started = time.time()
    load_before = os.getloadavg()
    try:
        mlserver_venv = None
        if "mlserver" in wanted:
            venv = Path(
                args.mlserver_venv or os.environ.get("MLSERVER_VENV") or DEFAULT_MLSERVER_VENV
            )
            mlserver_venv = ensure_mlserver_venv(venv)
        print(f"Work dir {workdir}; training + registering + promoting + bundling ...", flush=True)
        t0 = time.perf_counter()
        x, model, promoted, bundle, source_dir = prepare_model(workdir)
        print(
            f"   {promoted.summary()}\n   bundle {bundle.path} ({bundle.manifest.name} "
            f"v{bundle.manifest.version}); source model {source_dir}; "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        print(f"   sklearn prediction for the 1-row body: {model.predict(x.head(1))[0]}")
        bodies = write_bodies(x, workdir, bundle.manifest.io.inputs[0].name)
        specs = server_specs(args, workdir, tracking_uri, bundle, source_dir, mlserver_venv)
        if args.baseline_tree:
            wanted.append("baseline")
        for name in (
            "mlflow",
            "mlserver",
            "mlserver-onnx",
            "uvicorn",
            "fastapi",
            "baseline",
            "ours",
        ):
            if name in wanted:
                bench_server(name, specs[name], bodies, args, reports, running)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers", file=sys.stderr)
        return 130
    finally:
        for server in list(running):
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")
    load_after = os.getloadavg()

    header = (
        f"{datetime.date.today().isoformat()}, {platform.node()}, {os.cpu_count()} cores; "
        f"server on core {SERVER_CORE}, wrk on core {WRK_CORE} (-t1, 1 Lua body); "
        f"{args.duration} s per scenario (best of {args.repeats}); "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"total {time.time() - started:.0f} s"
    )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "header": header,
                    "args": vars(args),
                    "reports": {
                        k: asdict(v) | {"cold_start_s": v.cold_start_s} for k, v in reports.items()
                    },
                },
                indent=2,
                default=str,
            )
        )
    report_tables(reports, header, args.duration, args.markdown)
    return 0


def report_tables(reports: dict[str, ServerReport], header: str, duration: int, markdown=None):
    tables = build_tables(reports)
    print("\n" + header)
    md = [f"_{header}_", ""]
    for key, title in TITLES.items():
        title = title.format(wrk=WRK_CORE, srv=SERVER_CORE, d=duration)
        print(f"\n{title}\n{render_text(tables[key])}")
        md += [f"**{title}**", "", render_markdown(tables[key]), ""]
    if markdown:
        Path(markdown).write_text("\n".join(md))


def rerender(path: str, markdown: str | None) -> int:
    """Print (and optionally write as Markdown) the tables of an earlier ``--json`` run."""
    doc = json.loads(Path(path).read_text())
    reports = {}
    for key, raw in doc["reports"].items():
        raw = {k: v for k, v in raw.items() if k != "cold_start_s"}
        results = [Result(**r) for r in raw.pop("results")]
        reports[key] = ServerReport(**raw, results=results)
    report_tables(reports, doc["header"], int(doc["args"]["duration"]), markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
