"""Issue 11: the twin's outputs have the source pyfunc's types (int64 'l', float64, str, bool)
through the pyfunc and ``mlflow.models.predict``; through ``mlflow.pyfunc.spark_udf`` (a real
local Spark) in tests/batch/test_spark_udf.py."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import log_sklearn, mixed_data, mixed_pipeline, tracking_store
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

import mlflow_deploy_plugins

LABELS = {
    "int": lambda t: t.astype(np.int64),
    "str": lambda t: np.where(t, "yes", "no").astype(object),
    "bool": lambda t: t.astype(bool),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Source and twin model URIs: classifiers with int/str/bool labels and a regressor."""
    root = tmp_path_factory.mktemp("types")
    with tracking_store(root):
        frame, target = mixed_data(300)
        out = {"frame": frame}
        for kind, make in LABELS.items():
            model = mixed_pipeline(LogisticRegression(max_iter=500)).fit(frame, make(target))
            out[kind] = _pair(model, frame, root / kind)
        reg = mixed_pipeline(RandomForestRegressor(n_estimators=10, random_state=0))
        reg.fit(frame, frame.age * 2.0)
        out["value"] = _pair(reg, frame, root / "value")
        yield out


def _pair(model, frame, path):
    info = log_sklearn(model, frame.head(5))
    mlflow_deploy_plugins.convert(info.model_uri, sample=frame).save(str(path))
    return info.model_uri, str(path)


@pytest.mark.parametrize("kind", ["int", "str", "bool", "value"])
def test_pyfunc_types_equal_the_source(models, kind):
    source_uri, twin_path = models[kind]
    rows = models["frame"].head(20)
    expected = np.asarray(mlflow.pyfunc.load_model(source_uri).predict(rows))
    got = np.asarray(mlflow.pyfunc.load_model(twin_path).predict(rows))
    assert got.dtype == expected.dtype and got.dtype.char == expected.dtype.char
    assert {type(v) for v in got.tolist()} == {type(v) for v in expected.tolist()}
    if kind == "int":
        assert got.dtype.char == "l"
        assert len(pd.DataFrame({"p": got}).select_dtypes("int64").columns) == 1
    if kind == "value":
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    else:
        assert (got == expected).all()


@pytest.mark.parametrize("kind", ["int", "str", "value"])
def test_mlflow_models_predict_types(models, kind, tmp_path):
    rows = models["frame"].head(10)
    answers = []
    for i, uri in enumerate(models[kind]):
        out = tmp_path / f"out{i}.json"
        mlflow.models.predict(
            uri, rows, content_type="json", output_path=str(out), env_manager="local"
        )
        answers.append(json.loads(out.read_text())["predictions"])
    source, twin = answers
    assert [type(v) for v in twin] == [type(v) for v in source]
    np.testing.assert_allclose(twin, source, rtol=1e-5) if kind == "value" else None
    assert kind == "value" or twin == source
