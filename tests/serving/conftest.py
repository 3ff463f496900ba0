"""Fixtures for the serving runtime's end-to-end tests: real models, real bundles, real servers.

``served`` (session): a GradientBoosting classifier (3 numeric + 1 string column) registered in a
SQLite store and promoted to ``churn-onnx@champion``, its serving bundle, a bundle converted
straight from the sklearn source (nothing registered), a regressor bundle; pyfunc models to compare
with. ``start_server`` (module): spawns ``python -m mlflow_deploy_plugins.serving serve BUNDLE``
on a free 127.0.0.1 port and waits for ``/v2/health/ready``; stops what it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import churn_frame

HOST = "127.0.0.1"
CLF_COLUMNS = ["age", "income", "tenure", "city"]
REG_COLUMNS = [f"x{i}" for i in range(5)]
#: (label, seconds from spawn to the first 200 on the ready probe) of every server started.
COLD_STARTS: list[tuple[str, float]] = []


def churn_target(frame: pd.DataFrame, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    score = (
        (frame.age - 40) / 10
        + (np.log(frame.income) - 10) * 2
        + (frame.tenure - 10) / 5
        + (frame.city == "lyon") * 1.0
        + rng.normal(0, 0.5, len(frame))
    )
    return (score > 0).to_numpy()


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """Real models and bundles, built once per session (see the module docstring)."""
    import mlflow
    from helpers import mixed_pipeline, numeric_pipeline, register_sklearn, tracking_store
    from mlflow.tracking import MlflowClient
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    from mlflow_deploy_plugins import build_bundle, promote

    root = tmp_path_factory.mktemp("served")
    store = root / "store"
    store.mkdir()
    with tracking_store(store) as uri:
        frame = churn_frame(400, seed=0)
        clf = mixed_pipeline(
            GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0),
            numeric=CLF_COLUMNS[:3],
            categorical=CLF_COLUMNS[3:],
        ).fit(frame, churn_target(frame))
        register_sklearn(clf, "churn", frame.head(5))
        promotion = promote("churn", "1", "champion", sample=frame)
        assert (promotion.onnx_name, str(promotion.onnx_version)) == ("churn-onnx", "1")
        client = MlflowClient()

        def registry():
            return sorted(
                (m.name, str(m.version)) for m in client.search_model_versions("name LIKE '%'")
            )

        before = registry()
        clf_bundle = build_bundle("models:/churn-onnx@champion", str(root / "clf-bundle"))
        converted_bundle = build_bundle(
            "models:/churn/1", str(root / "converted-bundle"), sample=frame
        )
        assert registry() == before, "building a bundle from a non-ONNX URI wrote to the registry"

        rng = np.random.default_rng(1)
        x = pd.DataFrame(rng.normal(size=(300, 5)), columns=REG_COLUMNS)
        y = x.x0 * 3 + x.x1**2 - x.x2 + rng.normal(scale=0.1, size=300)
        reg = numeric_pipeline(
            GradientBoostingRegressor(n_estimators=10, max_depth=3, random_state=0)
        ).fit(x, y)
        register_sklearn(reg, "reg", x.head(5))
        reg_bundle = build_bundle("models:/reg/1", str(root / "reg-bundle"), sample=x)

        onnx_pyfunc = mlflow.pyfunc.load_model("models:/churn-onnx@champion")
        source_pyfunc = mlflow.pyfunc.load_model("models:/churn/1")
        return SimpleNamespace(
            tracking_uri=uri,
            store=store,
            root=root,
            clf=clf,
            reg=reg,
            clf_frame=frame,
            reg_frame=x,
            clf_bundle=clf_bundle.path,
            converted_bundle=converted_bundle.path,
            reg_bundle=reg_bundle.path,
            clf_manifest=clf_bundle.manifest,
            converted_manifest=converted_bundle.manifest,
            onnx_pyfunc=onnx_pyfunc,
            source_pyfunc=source_pyfunc,
            registry_before=before,
        )


# ====================================================================== HTTP client helpers
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict | None = None,
    headers: dict | None = None,
    timeout: float = 10.0,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    """One request (a new connection unless ``conn`` is given); dict bodies are sent as JSON."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        if own:
            conn.close()


# ====================================================================== server processes
@dataclass
class Server:
    """A serving runtime in its own process."""

    label: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict
    proc: subprocess.Popen | None = None
    cold_start_s: float | None = None
    _log: object = field(default=None, repr=False)

    def start(self, ready_path: str = "/v2/health/ready", timeout: float = 60.0) -> Server:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.log_path.parent,
        )
        self.wait_ready(ready_path, timeout, spawned)
        return self

    def wait_ready(self, path: str, timeout: float, spawned: float) -> None:
        deadline = spawned + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.label} exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.log()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.port, "GET", path, timeout=1.0).status == 200:
                    self.cold_start_s = time.perf_counter() - spawned
                    COLD_STARTS.append((self.label, self.cold_start_s))
                    return
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"{self.label} was not ready after {timeout}s:\n{self.log()}")

    def request(self, method: str, path: str, body=None, headers=None, **kwargs) -> Reply:
        return request(self.port, method, path, body, headers, **kwargs)

    def get(self, path: str, **kwargs) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body=None, headers=None, **kwargs) -> Reply:
        return self.request("POST", path, body, headers, **kwargs)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit code (killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"{self.label} did not exit {timeout}s after signal {sig}:\n{self.log()}"
                ) from None
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def server_env(**extra: str) -> dict:
    """The test environment without any MLFLOW_DEPLOY_* setting leaking in, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_DEPLOY_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """``start_server(bundle, *flags, env=..., argv=..., label=..., ready=True, port=None)``.

    ``argv`` replaces ``python -m mlflow_deploy_plugins.serving serve BUNDLE``; ``--port`` is
    appended. Every server started is stopped (SIGTERM, then SIGKILL) at the end of the module.
    """
    started: list[Server] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(
        bundle: str | None,
        *flags: str,
        env: dict | None = None,
        argv: list[str] | None = None,
        label: str = "server",
        ready: bool = True,
        ready_path: str = "/v2/health/ready",
        timeout: float = 60.0,
        port: int | None = None,
    ) -> Server:
        port = port or free_port()
        if argv is None:
            argv = [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve"]
            argv += [bundle] if bundle else []
        argv = [*argv, *flags, "--port", str(port)]
        log_path = logs / f"{label}-{port}.log"
        server = Server(label, argv, port, log_path, env if env is not None else server_env())
        started.append(server)
        if ready:
            server.start(ready_path, timeout)
        else:
            server._log = open(log_path, "wb")  # noqa: SIM115
            server.proc = subprocess.Popen(
                argv, stdout=server._log, stderr=subprocess.STDOUT, env=server.env, cwd=logs
            )
        return server

    yield start
    for server in started:
        if server.alive():
            with contextlib.suppress(AssertionError):
                server.stop(timeout=10)
        server.kill()


@pytest.fixture(scope="module")
def grpc_server(start_server, served):
    """The classifier's bundle served over HTTP and gRPC (``server.grpc_port``), no token."""
    port = free_port()
    server = start_server(served.clf_bundle, "--grpc-port", str(port), label="grpc")
    server.grpc_port = port
    return server


@pytest.fixture(scope="module")
def grpc_token_server(start_server, served, tmp_path_factory):
    """The same with a bearer token (``server.token``) required on both protocols."""
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text("grpc-s3cret")
    port = free_port()
    server = start_server(
        served.clf_bundle,
        "--grpc-port",
        str(port),
        "--auth-token-file",
        str(token),
        label="grpc-auth",
    )
    server.grpc_port, server.token = port, "grpc-s3cret"
    return server


def pytest_terminal_summary(terminalreporter):
    if COLD_STARTS:
        terminalreporter.write_sep("-", "serving runtime cold starts (spawn -> first 200 on ready)")
        for label, seconds in COLD_STARTS:
            terminalreporter.write_line(f"{label}: {seconds * 1000:.0f} ms")


def v2_columns_body(frame) -> dict:
    """A V2 request with one 1-D input per column of ``frame`` (city as BYTES)."""
    return {
        "inputs": [
            {
                "name": c,
                "datatype": "BYTES" if c == "city" else "FP64",
                "shape": [len(frame)],
                "data": frame[c].tolist(),
            }
            for c in frame.columns
        ]
    }


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of ``size`` (``@pytest.mark.parametrize("small_disk", ["64k"], indirect=True)``,
    default 64 KiB): writes fail with ENOSPC once it is full, like a full production disk."""
    size = getattr(request, "param", "64k")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs (needs root): {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="session")
def kit():
    """This folder's helpers for the test modules (conftest is not importable by name)."""
    return SimpleNamespace(
        HOST=HOST,
        CLF_COLUMNS=CLF_COLUMNS,
        REG_COLUMNS=REG_COLUMNS,
        churn_frame=churn_frame,
        free_port=free_port,
        request=request,
        server_env=server_env,
        v2_columns_body=v2_columns_body,
    )
