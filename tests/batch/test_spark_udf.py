"""Issue 15: ``mlflow.pyfunc.spark_udf(spark, "models:/x-onnx@champion", result_type=...)`` on the
ONNX twin registered by ``promote()`` gives what it gives on the source, for every result type
the source supports, in a real local Spark (one session per test run, tests/conftest.py).

Result types tried per source (measured on the sklearn sources with MLflow 3.17: every other of
long, integer, double, float, string, boolean, array<double|long|string> and struct types fails
on the source itself). ``None`` is spark_udf's default: the type read from the model's output
schema, also what a UDF called without columns uses.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from helpers import log_sklearn, mixed_data, mixed_pipeline, tracking_store
from mlflow.models import Model
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression

import mlflow_deploy_plugins

#: kind -> (labels or target from the data, estimator, pyfunc_predict_fn)
SOURCES = {
    "int": (lambda f, t: t.astype(np.int64), lambda: LogisticRegression(max_iter=500), "predict"),
    "str": (
        lambda f, t: np.where(t, "yes", "no"),
        lambda: LogisticRegression(max_iter=500),
        "predict",
    ),
    "bool": (lambda f, t: t.astype(bool), lambda: LogisticRegression(max_iter=500), "predict"),
    "proba": (
        lambda f, t: t.astype(np.int64),
        lambda: LogisticRegression(max_iter=500),
        "predict_proba",
    ),
    "value": (
        lambda f, t: f.age * 2.0,
        lambda: RandomForestRegressor(n_estimators=5, random_state=0),
        "predict",
    ),
}
SUPPORTED = {
    "int": [
        None,
        "long",
        "double",
        "float",
        "string",
        "array<double>",
        "array<long>",
        "array<string>",
    ],
    "str": [None, "string", "array<string>"],
    "bool": [None, "boolean", "string", "array<string>"],
    "proba": ["double", "float", "string", "array<double>", "array<string>"],
    "value": [None, "double", "float", "string", "array<double>", "array<string>"],
}
#: numbers (and numbers as text) from a float32 graph: the parity gate's relative tolerance
RTOL = 1e-3


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """``kind -> (source URI, twin URI)``: each source registered as ``m-<kind>`` v1 and
    promoted, so the twin is ``models:/m-<kind>-onnx@champion`` in a real registry."""
    root = tmp_path_factory.mktemp("spark-udf")
    with tracking_store(root):
        frame, target = mixed_data(300)
        uris = {"frame": frame}
        for kind, (labels, estimator, predict_fn) in SOURCES.items():
            model = mixed_pipeline(estimator()).fit(frame, labels(frame, target))
            log_sklearn(
                model,
                frame.head(5),
                registered_model_name=f"m-{kind}",
                pyfunc_predict_fn=predict_fn,
            )
            mlflow_deploy_plugins.promote(f"m-{kind}", 1, alias="champion", sample=frame)
            uris[kind] = (f"models:/m-{kind}/1", f"models:/m-{kind}-onnx@champion")
        yield uris


@pytest.mark.parametrize("kind", list(SOURCES))
def test_twin_declares_the_source_output_schema(registered, kind):
    """What spark_udf's default result type is read from (no Spark needed)."""
    source, twin = (Model.load(uri).signature for uri in registered[kind])
    assert twin.outputs == source.outputs
    assert twin.inputs.input_names() == source.inputs.input_names()


def _scores(spark, frame, uri: str, kind: str) -> list[tuple]:
    """One Spark job: a column per supported result type, plus the UDF called without columns
    (the signature's) for the default type."""
    df = spark.createDataFrame(frame)
    columns = list(frame.columns)
    selected = []
    for i, result_type in enumerate(SUPPORTED[kind]):
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type=result_type, env_manager="local")
        selected.append(udf(*columns).alias(f"r{i}"))
        if result_type is None:
            selected.append(udf().alias("no_columns"))
    return [tuple(row) for row in df.select(*selected).collect()]


def _same(twin, source, numbers: bool) -> bool:
    if type(twin) is not type(source):
        return False
    if isinstance(source, list):
        return len(twin) == len(source) and all(
            _same(t, s, numbers) for t, s in zip(twin, source, strict=True)
        )
    if numbers and isinstance(source, (float, str)):
        return float(twin) == pytest.approx(float(source), rel=RTOL)
    return twin == source


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SOURCES))
def test_spark_udf_on_the_registered_twin_like_the_source(registered, spark, kind):
    source_uri, twin_uri = registered[kind]
    rows = registered["frame"].head(12)
    source = _scores(spark, rows, source_uri, kind)  # fails the test if the source cannot
    twin = _scores(spark, rows, twin_uri, kind)
    numbers = kind in ("value", "proba")
    names = [n for t in SUPPORTED[kind] for n in ([str(t), "udf()"] if t is None else [t])]
    for j, name in enumerate(names):
        got, expected = [r[j] for r in twin], [r[j] for r in source]
        assert _same(got, expected, numbers), f"result_type={name}: twin {got} != source {expected}"
    if kind == "int":  # issue 15's report: long labels as longlong failed the UDF
        assert {type(r[names.index("long")]) for r in twin} == {int}
