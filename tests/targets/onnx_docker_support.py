"""Shared by the tests of the Docker targets against a real engine: the model store they deploy
from, a continuous client load, and a way to make the next bundles fail their integrity check."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from docker_support import BackgroundClients, corrupt_bundles  # noqa: F401 (re-exported)
from helpers import NUMERIC, mixed_data, mixed_pipeline, tracking_store


@contextlib.contextmanager
def churn_registry(path: Path, run: str):
    """A store with a source sklearn model (v1, v2) and the ONNX twin of v1 (@champion)."""
    from helpers import register_sklearn
    from sklearn.linear_model import LogisticRegression

    import mlflow_deploy_plugins

    with tracking_store(path) as uri:
        x, y = mixed_data()
        name = f"churn-{run}"
        v1 = mixed_pipeline(LogisticRegression()).fit(x, y)
        v2 = mixed_pipeline(LogisticRegression(C=0.02)).fit(x, y)
        register_sklearn(v1, name, x.head(100))
        register_sklearn(v2, name, x.head(100))
        mlflow_deploy_plugins.promote(name, 1, alias="champion", sample=x)
        yield {
            "uri": uri,
            "name": name,
            "onnx_name": f"{name}-onnx",
            "x": x,
            "models": {"1": v1, "2": v2},
            "path": path,
        }


class Load(BackgroundClients):
    """Continuous clients: keep-alive sessions (V2) and one new connection per request
    (MLflow scoring). Bounded: they stop when told to, or after ``limit_s``."""

    def __init__(self, port: int, model: str, frame, limit_s: float = 120.0, token=None):
        import requests

        self.requests = requests
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = f"http://127.0.0.1:{port}"
        self.model = model
        self.v2 = {
            "inputs": [
                {
                    "name": c,
                    "shape": [1, 1],
                    "datatype": "FP64" if c in NUMERIC else "BYTES",
                    "data": [float(frame[c].iloc[0]) if c in NUMERIC else str(frame[c].iloc[0])],
                }
                for c in frame.columns
            ]
        }
        self.scoring = {"dataframe_records": json.loads(frame.head(2).to_json(orient="records"))}
        self.ok = 0
        self.failed: list[str] = []
        self.versions: dict[str, int] = {}
        super().__init__(self._keepalive, self._keepalive, self._fresh, limit_s=limit_s)

    def _keepalive(self):
        session = self.requests.Session()
        session.headers.update(self.headers)
        while self.running():
            try:
                r = session.post(
                    f"{self.url}/v2/models/{self.model}/infer", json=self.v2, timeout=10
                )
                if r.status_code != 200:
                    self.failed.append(f"keep-alive {r.status_code} {r.text[:100]}")
                    continue
                self.ok += 1
                version = r.json().get("model_version")
                self.versions[version] = self.versions.get(version, 0) + 1
            except self.requests.RequestException as e:
                self.failed.append(f"keep-alive {e!r}")

    def _fresh(self):
        while self.running():
            try:
                r = self.requests.post(
                    f"{self.url}/invocations", json=self.scoring, headers=self.headers, timeout=10
                )
                if r.status_code != 200:
                    self.failed.append(f"new connection {r.status_code} {r.text[:100]}")
                else:
                    self.ok += 1
            except self.requests.RequestException as e:
                self.failed.append(f"new connection {e!r}")
