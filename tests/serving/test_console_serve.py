"""``mlflow-deploy serve BUNDLE`` hands over to the lean runtime before anything imports mlflow:
proved by serving with an ``mlflow`` on the path that refuses to be imported."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np


def _mlflow_deploy() -> str:
    script = Path(sys.executable).parent / "mlflow-deploy"
    return str(script) if script.exists() else shutil.which("mlflow-deploy")


def test_serving_a_bundle_never_imports_mlflow(served, start_server, kit, tmp_path):
    poisoned = tmp_path / "poisoned"
    (poisoned / "mlflow").mkdir(parents=True)
    (poisoned / "mlflow" / "__init__.py").write_text(
        "raise ImportError('mlflow-deploy serve BUNDLE imported mlflow')\n"
    )
    server = start_server(
        None,
        argv=[_mlflow_deploy(), "serve", served.clf_bundle],
        env=kit.server_env(PYTHONPATH=str(poisoned)),
        label="mlflow-deploy-serve-bundle",
    )
    frame = kit.churn_frame(3, seed=5)
    labels = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    reply = server.post("/invocations", {"dataframe_split": frame.to_dict("split")})
    assert reply.status == 200 and reply.json() == {"predictions": labels}, reply.text
    assert server.stop() == 0
