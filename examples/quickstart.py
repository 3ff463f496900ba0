"""The main job, the whole loop on one machine on embedded defaults (SQLite tracking store in the
working directory, nothing started by hand):

1. train a churn classifier (numeric + string columns), log and register it the way MLflow users
   do (skops format, logged training dataset);
2. promote it: conversion to ONNX, parity gate, ``churn-onnx`` registered with alias ``champion``;
3. deploy ``models:/churn-onnx@champion``: the ``onnx-docker`` target when a Docker engine answers
   (and the base image is there), otherwise a local process of the same serving runtime
   (``mlflow-deploy serve``); it says which and why;
4. send predictions over HTTP (MLflow's scoring protocol), then a batch of shifted customers;
5. run the drift report on what the endpoint logged (Evidently, logged to MLflow, version tags);
6. print where to look, then stop what it started unless ``--keep``.

Every step prints a progress line with its duration. Only public APIs: ours and MLflow's.

Run: ``python examples/quickstart.py [--keep] [--target auto|onnx-docker|local]`` (or
``bash examples/quickstart.sh`` on a fresh machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import mlflow
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import mlflow_deploy_plugins

_logger = logging.getLogger("quickstart")
MODEL_NAME = os.environ.get("QUICKSTART_MODEL", "churn")
DEPLOYMENT = f"{MODEL_NAME}-quickstart"
STEPS = 6


def make_data(n: int = 5_000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(42, 12, n).round(),
            "monthly_charges": rng.gamma(4, 20, n).round(2),
            "tenure_months": rng.integers(0, 72, n).astype(float),
            "support_calls": rng.poisson(1.5, n).astype(float),
            "contract": rng.choice(["monthly", "yearly", "two-year"], n, p=[0.6, 0.3, 0.1]),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    logit = (
        0.04 * (frame.monthly_charges - 80)
        - 0.05 * frame.tenure_months
        + 0.6 * frame.support_calls
        + np.where(frame.contract == "monthly", 1.2, -0.8)
    )
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    return frame, churned


def train(frame: pd.DataFrame, target: np.ndarray) -> Pipeline:
    numeric = ["age", "monthly_charges", "tenure_months", "support_calls"]
    categorical = ["contract", "region"]
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), numeric),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
                    ]
                ),
            ),
            ("model", GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0)),
        ]
    )
    return pipeline.fit(frame, target)


def log_and_register(pipeline: Pipeline, frame: pd.DataFrame, target: np.ndarray) -> str:
    """Log like a user would (skops, the MLflow 3 default) and register; returns the version."""
    import skops.io

    mlflow.set_experiment("churn-training")
    with mlflow.start_run(run_name="train-churn") as run:
        data_file = os.path.join(tempfile.mkdtemp(), "train.csv")
        frame.assign(churned=target).to_csv(data_file, index=False)
        dataset = mlflow.data.from_pandas(
            frame.assign(churned=target), source=data_file, targets="churned", name="churn-train"
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_metric("train_accuracy", float((pipeline.predict(frame) == target).mean()))
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            input_example=frame.head(5),
            registered_model_name=MODEL_NAME,
            skops_trusted_types=trusted,
        )
    _logger.info(
        "Logged run %s; registered %s v%s",
        run.info.run_id,
        MODEL_NAME,
        info.registered_model_version,
    )
    return str(info.registered_model_version)


class Steps:
    """``with steps("Train"):`` logs ``[1/6] Train ...`` and ``[1/6] Train: done in 2.1 s``."""

    def __init__(self) -> None:
        self.number = 0

    @contextlib.contextmanager
    def __call__(self, title: str):
        self.number += 1
        tag = f"[{self.number}/{STEPS}] {title}"
        _logger.info("%s ...", tag)
        started = time.perf_counter()
        yield
        _logger.info("%s: done in %.1f s", tag, time.perf_counter() - started)


class Endpoint:
    """A running deployment of the ONNX twin: its URL, how it runs, and how to stop it."""

    def __init__(self, url: str, how: str, stop) -> None:
        self.url, self.how, self._stop = url, how, stop

    def stop(self) -> None:
        self._stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(model_uri: str, payload_dir: str, args) -> Endpoint:
    """onnx-docker when it can run here, else a local process of the same runtime."""
    port = args.port or free_port()
    if args.target in ("auto", "onnx-docker"):
        try:
            return deploy_docker(model_uri, payload_dir, port, args.base_image)
        except Exception as e:  # the fallback says why; --target onnx-docker makes it fatal
            if args.target == "onnx-docker":
                raise
            reason = getattr(e, "message", None) or str(e)
            _logger.warning(
                "onnx-docker is not usable here (%s); serving with a local process of the same "
                "runtime instead (mlflow-deploy serve)",
                reason.splitlines()[0],
            )
    return deploy_local(model_uri, payload_dir, port)


def deploy_docker(model_uri: str, payload_dir: str, port: int, base_image: str) -> Endpoint:
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("onnx-docker")
    config = {"port": str(port), "payload_log_dir": payload_dir, "base_image": base_image}
    if os.geteuid() != 0:  # the container user must be able to write the payload log
        config["user"] = f"{os.getuid()}:{os.getgid()}"
    client.delete_deployment(DEPLOYMENT)  # a previous run's --keep; no error when absent
    info = client.create_deployment(DEPLOYMENT, model_uri, config=config)
    return Endpoint(
        info["endpoint_url"],
        f"onnx-docker container {info['container']} (image {info['image']})",
        lambda: client.delete_deployment(DEPLOYMENT),
    )


def deploy_local(model_uri: str, payload_dir: str, port: int) -> Endpoint:
    command = [
        sys.executable, "-m", "mlflow_deploy_plugins.cli", "serve", model_uri,
        "--host", "127.0.0.1", "--port", str(port), "--payload-log-dir", payload_dir,
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        server.terminate()
        server.wait(timeout=60)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow-deploy serve exited with {server.returncode}")
        ready = f"{url}/v2/health/ready"
        with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2) as response:
            if response.status == 200:
                return Endpoint(url, f"local process (pid {server.pid})", stop)
        time.sleep(0.2)
    stop()
    raise RuntimeError("mlflow-deploy serve did not become ready in 120 s")


def score(url: str, frame: pd.DataFrame) -> list:
    """POST /invocations (MLflow's scoring protocol, dataframe_split) -> the predictions."""
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
    request = urllib.request.Request(
        f"{url}/invocations", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Customers unlike the training data: pricier, newer, more support calls, monthly plans."""
    return frame.assign(
        monthly_charges=(frame.monthly_charges * 1.8).round(2),
        tenure_months=(frame.tenure_months / 4).round(),
        support_calls=frame.support_calls + 3,
        contract="monthly",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the endpoint running")
    parser.add_argument(
        "--target",
        choices=("auto", "onnx-docker", "local"),
        default="auto",
        help="where to deploy (auto: onnx-docker when a Docker engine answers)",
    )
    parser.add_argument("--port", type=int, default=None, help="endpoint port (default: free)")
    parser.add_argument(
        "--base-image",
        default=os.environ.get("QUICKSTART_BASE_IMAGE", "python:3.11-slim"),
        help="image onnx-docker builds on (default python:3.11-slim, or $QUICKSTART_BASE_IMAGE)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # An absolute path: the printed `mlflow ui` command works from any directory.
    default_store = f"sqlite:///{os.path.abspath('mlflow.db')}"
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", default_store)
    mlflow.set_tracking_uri(tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the deployment client reads it
    step = Steps()

    with step("Train, log and register the source model"):
        frame, target = make_data()
        version = log_and_register(train(frame, target), frame, target)

    with step(f"Promote {MODEL_NAME} v{version} (ONNX conversion + parity gate)"):
        # The whole release step: convert, gate on parity, register churn-onnx, alias it.
        result = mlflow_deploy_plugins.promote(MODEL_NAME, version, alias="champion")
        _logger.info(result.summary())
    model_uri = f"models:/{result.onnx_name}@champion"

    # One directory per run (the deployment creates it): the report reads this run's traffic.
    payload_dir = os.path.abspath(os.path.join("payload-log", time.strftime("%Y%m%dT%H%M%S")))
    with step(f"Deploy {model_uri}"):
        endpoint = deploy(model_uri, payload_dir, args)
        _logger.info("Serving at %s: %s", endpoint.url, endpoint.how)

    try:
        with step("Predict over HTTP, then send a shifted batch"):
            fresh, _ = make_data(n=400, seed=42)
            answers = score(endpoint.url, fresh)
            drifted, _ = make_data(n=800, seed=7)
            drifted = shifted(drifted)
            for chunk in range(0, len(drifted), 100):
                score(endpoint.url, drifted.iloc[chunk : chunk + 100])
            time.sleep(1.5)  # the payload log writer flushes in the background

        with step("Drift report on what the endpoint logged"):
            report = mlflow_deploy_plugins.drift_report(model_uri, payload_dir)
    finally:
        if not args.keep:
            with step("Clean up the deployment"):
                endpoint.stop()

    print_summary(result, tracking_uri, endpoint, fresh, answers, report, args.keep, payload_dir)


def print_summary(
    result, tracking_uri, endpoint, fresh, answers, report, kept, payload_dir
) -> None:
    client = mlflow.MlflowClient()
    twin = client.get_model_version(result.onnx_name, result.onnx_version)
    parity = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/parity_report.json"))
    print("\n=== Parity report (", result.onnx_name, "v" + result.onnx_version, ") ===")
    for out in parity["outputs"]:
        figures = {
            k: out[k]
            for k in ("max_abs_error", "max_rel_error", "label_agreement")
            if out[k] is not None
        }
        print(f"  {out['role']:<14} passed={out['passed']}  {figures}")
    print(f"  rows={parity['rows']} sample={parity['sample_origin']} passed={parity['passed']}")
    print(f"\n=== The endpoint's answer ({endpoint.url}/invocations, {endpoint.how}) ===")
    print(fresh.head(5).assign(churn=answers[:5]).to_string(index=False))
    print(
        f"  ... {len(answers)} rows answered; churn rate {sum(map(bool, answers)) / len(answers):.1%}"
    )
    verdict = "DRIFT" if report.drift_detected else "no drift"
    print(f"\n=== Drift verdict: {verdict} ===")
    print(f"  {report.summary()}")
    print(f"  drifted columns: {', '.join(report.drifted_columns) or 'none'}")
    print("\n=== Where to look ===")
    print(f"  tracking store : {tracking_uri}")
    print(
        f"  ONNX twin      : {result.onnx_name} v{result.onnx_version} (alias champion, tags "
        f"{sorted(k for k in twin.tags if k.startswith('mlflow_deploy.'))[:3]}...)"
    )
    print(f"  conversion run : {result.run_id} (parity_report.json, metrics parity.*)")
    print(f"  drift run      : {report.run_id} in experiment {report.experiment_name}")
    print(f"  drift report   : runs:/{report.run_id}/drift_report.html")
    print(f"  payload log    : {payload_dir}")
    if kept:
        print(f"  endpoint       : {endpoint.url} (still running: --keep)")
    else:
        print(f"  endpoint       : {endpoint.url} (stopped; --keep leaves it running)")
    print(f"  UI             : mlflow ui --backend-store-uri {tracking_uri}")


if __name__ == "__main__":
    main()
