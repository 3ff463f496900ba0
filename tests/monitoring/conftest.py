"""Drift-monitoring fixtures: a real store, a promoted model, real payload logs from the runtime.

``world`` (session): a GradientBoosting classifier over 4 numeric + 3 string columns whose target
depends on ``age`` and ``city`` only, registered as ``drifty`` v1 and promoted to
``drifty-onnx`` v1 (alias ``champion``) with a 2,000-row reference sample; its serving bundle; an
unpromoted model ``plain`` v1. ``payload_logs`` (session): the real serving runtime run twice,
once fed data like the reference, once data with 3 numeric and 2 categorical columns shifted
(none of which the model uses, so its predictions do not move), stopped with SIGTERM.
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
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

HOST = "127.0.0.1"
NUMERIC = ["age", "income", "tenure", "visits"]
CATEGORICAL = ["city", "plan", "channel"]
INPUTS = NUMERIC + CATEGORICAL
PREDICTIONS = ["prediction", "proba_False", "proba_True"]
#: What ``shifted`` moves: 5 of the 10 compared columns (share 0.5 = the default drift share).
SHIFTED = ["income", "tenure", "visits", "plan", "channel"]
MODEL, ONNX = "drifty", "drifty-onnx"


def make_frame(n: int, seed: int, shifted: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, n)
    tenure = rng.integers(0, 20, n).astype(float)
    visits = rng.poisson(3, n).astype(float)
    plan_p, channel_p = [0.7, 0.3], [0.5, 0.3, 0.2]
    if shifted:
        income, tenure, visits = income * 2, tenure + 8, visits + 4
        plan_p, channel_p = [0.2, 0.8], [0.1, 0.2, 0.7]
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n).round(3),
            "income": income.round(2),
            "tenure": tenure,
            "visits": visits,
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "plan": rng.choice(["basic", "pro"], n, p=plan_p),
            "channel": rng.choice(["web", "store", "phone"], n, p=channel_p),
        }
    )


def make_target(frame: pd.DataFrame) -> np.ndarray:
    return (((frame.age - 40) / 10 + (frame.city == "lyon") * 1.5) > 0).to_numpy()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    from helpers import mixed_pipeline, register_sklearn, tracking_store
    from sklearn.ensemble import GradientBoostingClassifier

    from mlflow_deploy_plugins import build_bundle, promote

    root = tmp_path_factory.mktemp("monitoring")
    store = root / "store"
    store.mkdir()
    with tracking_store(store) as uri:
        train = make_frame(2000, seed=0)
        clf = mixed_pipeline(
            GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0),
            numeric=NUMERIC,
            categorical=CATEGORICAL,
        ).fit(train, make_target(train))
        register_sklearn(clf, MODEL, train.head(5))
        promotion = promote(MODEL, "1", "champion", sample=train)
        assert (promotion.onnx_name, promotion.onnx_version) == (ONNX, "1")
        register_sklearn(clf, "plain", train.head(5))  # never promoted: no reference sample
        bundle = build_bundle(f"models:/{ONNX}@champion", str(root / "bundle"))
    return SimpleNamespace(uri=uri, root=root, store=store, bundle=bundle.path, model=clf)


@pytest.fixture
def store(world, monkeypatch):
    """Point mlflow (env, fluent API, new clients) at the session store for one test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.uri)
    monkeypatch.chdir(world.store)
    mlflow.set_tracking_uri(world.uri)
    mlflow.set_registry_uri(world.uri)
    yield world
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves it


# ====================================================================== the serving runtime
def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, data
        return json.loads(data)
    finally:
        conn.close()


def v2_body(frame: pd.DataFrame) -> dict:
    return {
        "inputs": [
            {
                "name": c,
                "datatype": "BYTES" if c in CATEGORICAL else "FP64",
                "shape": [len(frame)],
                "data": frame[c].tolist(),
            }
            for c in frame.columns
        ]
    }


class Runtime:
    """``python -m mlflow_deploy_plugins.serving serve BUNDLE --payload-log DIR`` on 127.0.0.1."""

    def __init__(self, bundle: str, log_dir: Path, *flags: str):
        self.port = free_port()
        self.log_path = log_dir.parent / f"{log_dir.name}-server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        argv = [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve", bundle]
        argv += ["--payload-log", str(log_dir), "--port", str(self.port), *flags]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"server not ready:\n{self.log_path.read_text()}")

    def send(self, frame: pd.DataFrame, seed: int = 0) -> int:
        """Send ``frame`` in requests of 1-40 rows, alternating V2 and /invocations."""
        rng = np.random.default_rng(seed)
        start = i = 0
        while start < len(frame):
            part = frame.iloc[start : start + int(rng.integers(1, 41))]
            start += len(part)
            if i % 2:
                post(self.port, "/invocations", {"dataframe_split": part.to_dict("split")})
            else:
                post(self.port, f"/v2/models/{ONNX}/infer", v2_body(part))
            i += 1
        return i

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def runtime(world):
    """``runtime(log_dir, *flags) -> Runtime``; every runtime started is stopped at the end."""
    started: list[Runtime] = []

    def start(log_dir: Path, *flags: str) -> Runtime:
        server = Runtime(world.bundle, log_dir, *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def payload_logs(world, runtime):
    """Payload-log directories written by the real runtime: ``same`` and ``shifted`` data."""
    out = {}
    for name, frame in (
        ("same", make_frame(1500, seed=1)),
        ("shifted", make_frame(1500, seed=2, shifted=True)),
    ):
        log_dir = world.root / f"payloads-{name}"
        # small files: several rotations, so the reader crosses file boundaries
        server = runtime(log_dir, "--payload-log-file-max-bytes", "65536")
        server.send(frame, seed=len(name))
        assert server.stop() == 0
        out[name] = SimpleNamespace(dir=log_dir, frame=frame)
    return SimpleNamespace(**out)


@pytest.fixture(scope="session")
def kit():
    return SimpleNamespace(
        INPUTS=INPUTS,
        NUMERIC=NUMERIC,
        CATEGORICAL=CATEGORICAL,
        PREDICTIONS=PREDICTIONS,
        SHIFTED=SHIFTED,
        MODEL=MODEL,
        ONNX=ONNX,
        make_frame=make_frame,
        v2_body=v2_body,
    )
