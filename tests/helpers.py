"""Shared test helpers: tiny real scikit-learn models, logged and registered in a real store.

Importable as ``helpers`` because ``tests/`` (the rootdir conftest's directory) is on sys.path.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin

NUMERIC = ["age", "income", "tenure"]
CATEGORICAL = ["city", "plan"]
#: fixed pip requirements skip MLflow's (slow, subprocess-based) requirement inference
PIP = ["scikit-learn"]


_TEMPLATE_DB: list[str] = []


def fresh_store_uri(path) -> str:
    """A fresh, empty SQLite tracking + registry store at ``path / 'mlflow.db'``.

    Creating the tables costs ~1.5 s per store; this copies a store migrated once per session
    (~0.05 s) and points its Default experiment's artifacts into ``path / 'mlruns'``, which is
    exactly what a new store created in ``path`` would hold.
    """
    import atexit
    import shutil
    import sqlite3
    import tempfile
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    if not _TEMPLATE_DB:
        template_dir = tempfile.mkdtemp(prefix="mlflow-store-template-")
        atexit.register(shutil.rmtree, template_dir, True)
        template = os.path.join(template_dir, "mlflow.db")
        client = MlflowClient(
            tracking_uri=f"sqlite:///{template}", registry_uri=f"sqlite:///{template}"
        )
        client.search_experiments()
        client.search_registered_models()
        _TEMPLATE_DB.append(template)
    db = Path(path) / "mlflow.db"
    shutil.copyfile(_TEMPLATE_DB[0], db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(Path(path) / "mlruns" / "0"),),
        )
        con.commit()
    return f"sqlite:///{db}"


@contextlib.contextmanager
def tracking_store(path):
    """Like conftest's ``tracking_uri`` (fresh store in ``path``, env + mlflow URIs set, cwd
    ``path``) as a context manager, for module-scoped stores and faster per-test stores."""
    import mlflow

    uri = fresh_store_uri(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        # mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI and never unsets it: set it here
        # so the monkeypatch restores it, or the next subprocess inherits this store.
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mp.chdir(path)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def mixed_data(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Same recipe as conftest's ``mixed_frame`` / ``mixed_target``, for module-scoped fixtures."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(10, 0.5, n),
            "tenure": rng.integers(0, 20, n).astype(float),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "plan": rng.choice(["basic", "pro"], n),
        }
    )
    f = frame
    target = (((f.age - 40) / 10 + (f.city == "lyon") * 1.5 - (f.plan == "pro")) > 0).to_numpy()
    return frame, target


def mixed_pipeline(estimator, numeric=NUMERIC, categorical=CATEGORICAL, imputer: bool = False):
    """ColumnTransformer selecting columns BY NAME: StandardScaler on numbers (after a
    SimpleImputer if asked), one-hot strings."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    scaler = make_pipeline(SimpleImputer(), StandardScaler()) if imputer else StandardScaler()
    columns = ColumnTransformer(
        [
            ("num", scaler, list(numeric)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), list(categorical)),
        ]
    )
    return Pipeline([("columns", columns), ("model", estimator)])


def numeric_pipeline(estimator):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), estimator)


def skops_trusted_types(model) -> list[str]:
    """What skops refuses to load from ``model`` unless trusted (e.g. sklearn's tree storage)."""
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


def log_sklearn(
    model,
    input_example=None,
    *,
    serialization_format: str = "skops",
    registered_model_name: str | None = None,
    pyfunc_predict_fn: str = "predict",
    dataset=None,
    signature=None,
    name: str = "model",
):
    """Log ``model`` in its own run (optionally with a logged input dataset); return ModelInfo."""
    import mlflow

    kwargs = {}
    if serialization_format == "skops":
        kwargs["skops_trusted_types"] = skops_trusted_types(model) or None
    if signature is not None:
        kwargs["signature"] = signature
    with mlflow.start_run():
        if dataset is not None:
            mlflow.log_input(dataset, context="training")
        return mlflow.sklearn.log_model(
            model,
            name=name,
            input_example=input_example,
            serialization_format=serialization_format,
            registered_model_name=registered_model_name,
            pyfunc_predict_fn=pyfunc_predict_fn,
            pip_requirements=PIP,
            **kwargs,
        )


def register_sklearn(model, name: str, input_example=None, **kwargs) -> str:
    """Log and register ``model`` as a new version of ``name``; return the version string."""
    info = log_sklearn(model, input_example, registered_model_name=name, **kwargs)
    return str(info.registered_model_version)


def onnx_versions(name: str) -> list[str]:
    """Versions of registered model ``name`` (empty when it does not exist)."""
    from mlflow.tracking import MlflowClient

    return sorted(str(mv.version) for mv in MlflowClient().search_model_versions(f"name='{name}'"))


def version_tags(name: str, version) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient().get_model_version(name, str(version)).tags)


class ClipTransformer(TransformerMixin, BaseEstimator):
    """A custom estimator skl2onnx has no converter for."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return np.clip(np.asarray(x, dtype=float), -3, 3)


def float32_trap_data(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """One feature with a cluster of consecutive float32 values and alternating labels.

    A tree after a StandardScaler splits between values one float32 ulp apart, so any rounding
    difference in the ONNX scaler (float32 arithmetic, x*(1/scale) instead of x/scale) flips
    predictions.
    """
    rng = np.random.default_rng(seed)
    start = np.float32(3.0 + seed * 0.37)
    cluster = start + np.arange(200, dtype=np.float32) * np.spacing(start)
    x = np.r_[rng.normal(size=300).astype(np.float32), cluster].astype(np.float64)
    y = np.r_[rng.integers(0, 2, 300), np.arange(200) % 2]
    return pd.DataFrame({"x": x}), y


def plant_pickle_payload(store, model_id: str, model, marker, pickled: str = "model.pkl") -> None:
    """Replace the stored ``pickled`` file of logged model ``model_id`` under ``store`` with a
    pickle that writes ``marker`` when loaded (a real ``__reduce__`` payload), then returns
    ``model`` itself.

    What a registry user (or anyone with write access to the artifact store) can do: the model
    still converts and predicts, and the marker file proves code from the file ran.
    """
    import pickle
    from pathlib import Path

    class Payload:
        def __reduce__(self):
            inner = pickle.dumps(model)
            code = f"(open({str(marker)!r}, 'w').write('ran'), __import__('pickle').loads({inner!r}))[1]"
            return (eval, (code,))

    planted = 0
    for path in Path(store).rglob(pickled):
        if model_id not in str(path):
            continue
        path.write_bytes(pickle.dumps(Payload()))
        planted += 1
    assert planted, f"no {pickled} under {store}"


def churn_frame(n: int, seed: int) -> pd.DataFrame:
    """Distinct rows (continuous numbers): each row's prediction tells it apart from most others."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n).round(3),
            "income": rng.lognormal(10, 0.5, n).round(2),
            "tenure": rng.integers(0, 20, n).astype(float),
            "city": rng.choice(["paris", "lyon", "nice"], n),
        }
    )
