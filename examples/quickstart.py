"""The main job, end to end on embedded defaults (SQLite tracking store in the working directory).

Train a churn classifier (numeric + string columns), log and register it the way MLflow users do
(skops format, logged training dataset), promote it: conversion to ONNX, parity gate, registration
of ``churn-onnx`` with the alias ``champion``. Then load the ONNX twin by alias and predict.

Run: ``python examples/quickstart.py`` (or ``bash examples/quickstart.sh`` on a fresh machine).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

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


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    mlflow.set_tracking_uri(tracking_uri)

    frame, target = make_data()
    version = log_and_register(train(frame, target), frame, target)

    # The whole release step: convert, gate on parity, register churn-onnx, alias it.
    result = mlflow_deploy_plugins.promote(MODEL_NAME, version, alias="champion")
    _logger.info(result.summary())

    onnx_model = mlflow.pyfunc.load_model(result.model_uri)
    fresh, _ = make_data(n=5, seed=42)
    labels = onnx_model.predict(fresh)
    probabilities = onnx_model.predict(fresh, params={"predict_method": "predict_proba"})

    client = mlflow.MlflowClient()
    twin = client.get_model_version(result.onnx_name, result.onnx_version)
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/parity_report.json"))
    print("\n=== Parity report (", result.onnx_name, "v" + result.onnx_version, ") ===")
    for out in report["outputs"]:
        figures = {
            k: out[k]
            for k in ("max_abs_error", "max_rel_error", "label_agreement")
            if out[k] is not None
        }
        print(f"  {out['role']:<14} passed={out['passed']}  {figures}")
    print(f"  rows={report['rows']} sample={report['sample_origin']} passed={report['passed']}")
    print("\n=== Predictions from", result.model_uri, "===")
    print(fresh.assign(churn=labels, p_churn=probabilities[:, 1].round(3)).to_string(index=False))
    print("\n=== Where to look ===")
    print(f"  tracking store : {tracking_uri}")
    print(
        f"  ONNX twin      : {result.onnx_name} v{result.onnx_version} "
        f"(alias champion, tags {sorted(k for k in twin.tags if k.startswith('mlflow_deploy.'))[:3]}...)"
    )
    print(f"  conversion run : {result.run_id} (parity_report.json, metrics parity.*)")
    print(f"  UI             : mlflow ui --backend-store-uri {tracking_uri}")


if __name__ == "__main__":
    main()
