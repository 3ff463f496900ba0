"""Issue 12: drift on label columns of any dtype (int, bool, str), regression values and
probability columns, read from a DataFrame, Parquet, CSV and the runtime's payload log.

Each model is promoted with a 3,000-row sample (its reference); the current data is drawn from
the same distribution, so every report must come out ``no_drift`` with every column compared.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins import build_bundle, promote
from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.monitoring.drift import drift_report
from mlflow_deploy_plugins.serving.metrics import ServingMetrics
from mlflow_deploy_plugins.serving.model import ServedModel
from mlflow_deploy_plugins.serving.payload_log import PayloadLogger

NUMERIC = ["age", "income"]
CATEGORICAL = ["city"]
INPUTS = NUMERIC + CATEGORICAL


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n).round(3),
            "income": rng.lognormal(10, 0.5, n).round(2),
            "city": rng.choice(["paris", "lyon", "nice"], n),
        }
    )


def score(x: pd.DataFrame) -> np.ndarray:
    return (x.age - 40) / 10 + (x.city == "lyon") * 1.5


#: model name -> (estimator kind, how its target is made from the score)
TARGETS = {
    "lab-int": ("clf", lambda s: (s > 0).astype(np.int64).to_numpy()),
    "lab-bool": ("clf", lambda s: (s > 0).to_numpy()),
    "lab-str": ("clf", lambda s: np.where(s > 0, "churn", "stay")),
    "lab-reg": ("reg", lambda s: s.to_numpy() * 100.0),
}


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    from helpers import mixed_pipeline, register_sklearn, tracking_store
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    root = tmp_path_factory.mktemp("label-dtypes")
    store = root / "store"
    store.mkdir()
    with tracking_store(store) as uri:
        train = frame(3000, seed=0)
        bundles = {}
        for name, (kind, target) in TARGETS.items():
            estimator = (
                GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0)
                if kind == "clf"
                else GradientBoostingRegressor(n_estimators=10, max_depth=2, random_state=0)
            )
            model = mixed_pipeline(estimator, numeric=NUMERIC, categorical=CATEGORICAL)
            model.fit(train, target(score(train)))
            register_sklearn(model, name, train.head(5))
            promote(name, "1", "champion", sample=train)
            bundles[name] = build_bundle(f"models:/{name}-onnx@champion", str(root / name)).path
        yield SimpleNamespace(uri=uri, root=root, bundles=bundles)


def payload_log(bundle: str, current: pd.DataFrame, directory) -> str:
    """The serving runtime's model and payload logger, fed ``current`` in requests of 100 rows."""
    served = ServedModel(bundle)
    logger = PayloadLogger(directory, served.name, served.version, metrics=ServingMetrics())
    for start in range(0, len(current), 100):
        chunk = current.iloc[start : start + 100]
        feed = {}
        for binding in served.io.inputs:
            dtype = object if binding.dtype == "string" else binding.dtype
            feed[binding.name] = chunk[list(binding.columns)].to_numpy().astype(dtype)
        outputs = dict(zip(served.output_names, served.run(feed), strict=True))
        columns = {c: chunk[c].to_numpy() for c in INPUTS}
        assert logger.submit(f"r{start}", columns, outputs)
    assert logger.close()
    return str(directory)


def current_source(kind: str, current: pd.DataFrame, bundle: str, tmp_path):
    if kind == "dataframe":
        return current
    if kind == "parquet":
        current.to_parquet(tmp_path / "current.parquet")
        return str(tmp_path / "current.parquet")
    if kind == "csv":
        current.to_csv(tmp_path / "current.csv", index=False)
        return str(tmp_path / "current.csv")
    return payload_log(bundle, current, tmp_path / "payloads")


@pytest.mark.parametrize(
    ("model", "source"),
    [
        ("lab-int", "dataframe"),
        ("lab-int", "parquet"),
        ("lab-int", "csv"),
        ("lab-int", "payload_log"),
        ("lab-bool", "csv"),
        ("lab-bool", "payload_log"),
        ("lab-str", "parquet"),
        ("lab-str", "csv"),
        ("lab-str", "payload_log"),
        ("lab-reg", "dataframe"),
        ("lab-reg", "csv"),
        ("lab-reg", "payload_log"),
    ],
)
def test_drift_on_any_label_dtype_and_source(promoted, model, source, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", promoted.uri)
    mlflow.set_tracking_uri(promoted.uri)
    mlflow.set_registry_uri(promoted.uri)
    try:
        current = current_source(source, frame(1500, seed=7), promoted.bundles[model], tmp_path)
        uri = f"models:/{model}-onnx@champion"

        result = drift_report(uri, current)

        compared = [c.column for c in result.columns]
        assert compared[:3] == INPUTS
        predictions = compared[3:]
        if model == "lab-reg":
            assert predictions == ["prediction"]
        else:  # the label and one probability column per class
            assert predictions[0] == "prediction" and len(predictions) == 3
            assert all(p.startswith("proba_") for p in predictions[1:])
        assert result.status == "no_drift", [(c.column, c.score) for c in result.columns]
        tags = MlflowClient().get_model_version(f"{model}-onnx", "1").tags
        assert tags[tag_keys.DRIFT_STATUS] == "no_drift"
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves it


def test_a_label_that_cannot_be_the_reference_classes_is_still_refused():
    from mlflow_deploy_plugins.errors import InvalidInputError
    from mlflow_deploy_plugins.monitoring.schema import ExpectedColumns, conform
    from mlflow_deploy_plugins.monitoring.settings import CATEGORICAL as CAT

    expected = ExpectedColumns((), ("prediction",), {"prediction": CAT})
    reference = conform(pd.DataFrame({"prediction": [0, 1, 1]}), expected, "reference", False)
    assert reference["prediction"].tolist() == [0, 1, 1]  # an int label is a category
    ok = conform(pd.DataFrame({"prediction": ["1", "0"]}), expected, "current", False, reference)
    assert ok["prediction"].tolist() == [1, 0]
    with pytest.raises(InvalidInputError, match=r"current data: prediction \(float64"):
        conform(pd.DataFrame({"prediction": [0.5, 1.0]}), expected, "current", False, reference)
    text = conform(pd.DataFrame({"prediction": ["no", "yes"]}), expected, "reference", False)
    with pytest.raises(InvalidInputError, match="prediction"):
        conform(pd.DataFrame({"prediction": [3, 4]}), expected, "current", False, text)
