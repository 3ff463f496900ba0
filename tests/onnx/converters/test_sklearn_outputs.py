"""What a converted scikit-learn model serves: one output per thing the source computes, named
by the source method behind it; nothing the source cannot produce; refusals that name the
estimator's class path, the reason and what to do.

Each case is logged to a real store, converted through ``mlflow_deploy_plugins.convert`` and
loaded back as an MLflow pyfunc; comparisons use rows the model was not fitted on.
"""

from __future__ import annotations

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from helpers import ClipTransformer, log_sklearn, tracking_store
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
)
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

import mlflow_deploy_plugins
from mlflow_deploy_plugins.errors import (
    ConversionError,
    DeployPluginError,
    InvalidInputError,
    UnsupportedModelError,
)
from mlflow_deploy_plugins.onnx.converters.base import ConversionOptions, SourceModel
from mlflow_deploy_plugins.onnx.converters.sklearn import SklearnConverter

COLUMNS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("outputs-store")
    with tracking_store(path) as uri:
        yield uri


def frame(n: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(n, 3)), columns=COLUMNS)


def labels(df: pd.DataFrame, classes: int) -> np.ndarray:
    y = (df["a"] > 0).astype(int)
    return (y + (df["b"] > 0.5)).to_numpy() if classes == 3 else y.to_numpy()


def twin_of(model, tmp_path, train: pd.DataFrame):
    info = log_sklearn(model, train.head(5), serialization_format="cloudpickle")
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame(300, 1))
    result.save(str(tmp_path / "twin"))
    return result, mlflow.pyfunc.load_model(str(tmp_path / "twin"))


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_svc_serves_labels_and_decision_values_never_probabilities(store, tmp_path, classes):
    train = frame(300, 0)
    model = LinearSVC().fit(train, labels(train, classes))
    result, twin = twin_of(model, tmp_path, train)
    fresh = frame(500, 2)

    assert {o.role for o in result.io.outputs} == {"label", "value"}
    assert result.io.extra["source_methods"] == {"label": "predict", "value": "decision_function"}
    np.testing.assert_array_equal(twin.predict(fresh), model.predict(fresh))
    np.testing.assert_allclose(
        twin.predict(fresh, params={"predict_method": "predict_values"}),
        model.decision_function(fresh),
        atol=1e-4,
        rtol=1e-3,
    )
    with pytest.raises(DeployPluginError, match="no 'probabilities' output"):
        twin.predict(fresh, params={"predict_method": "predict_proba"})


def test_svc_without_probability_has_no_zipmap_and_no_probabilities(store, tmp_path):
    train = frame(300, 0)
    model = SVC().fit(train, labels(train, 3))
    result, twin = twin_of(model, tmp_path, train)

    assert not [n for n in result.onnx_model.graph.node if n.op_type == "ZipMap"]
    assert "probabilities" not in {o.role for o in result.io.outputs}
    np.testing.assert_array_equal(twin.predict(frame(500, 2)), model.predict(frame(500, 2)))


def test_isolation_forest_predict_is_plus_minus_one_and_scores_are_a_named_method(store, tmp_path):
    """Following the old advice (atol=2.5) registered a twin whose predict returned scores."""
    train = frame(400, 0)
    model = IsolationForest(random_state=0).fit(train)
    result, twin = twin_of(model, tmp_path, train)
    fresh = frame(500, 2)

    got = np.asarray(twin.predict(fresh))
    assert set(np.unique(got)) <= {-1, 1}
    np.testing.assert_array_equal(got, model.predict(fresh))
    assert result.io.extra["source_methods"]["value"] == "decision_function"
    np.testing.assert_allclose(
        twin.predict(fresh, params={"predict_method": "predict_values"}),
        model.decision_function(fresh),
        atol=1e-4,
        rtol=1e-3,
    )


def test_isolation_forest_routes_nan_like_the_source(store, tmp_path):
    """skl2onnx writes one TreeEnsemble node per tree for IsolationForest; sklearn's
    ``missing_go_to_left`` must reach every one of them (9% of rows with NaN agreed before)."""
    train = frame(400, 0)
    model = IsolationForest(random_state=0).fit(train)
    _, twin = twin_of(model, tmp_path, train)
    fresh = frame(1000, 3)
    mask = np.random.default_rng(4).random(fresh.shape) < 0.2
    fresh = fresh.mask(mask)
    assert fresh.isna().any(axis=1).mean() > 0.4

    np.testing.assert_array_equal(np.asarray(twin.predict(fresh)), model.predict(fresh))
    np.testing.assert_allclose(
        twin.predict(fresh, params={"predict_method": "predict_values"}),
        model.decision_function(fresh),
        atol=1e-4,
        rtol=1e-3,
    )


@pytest.mark.parametrize("loss", ["squared_error", "poisson"])
def test_hist_gradient_boosting_regressor_returns_the_sources_dtype(store, tmp_path, loss):
    """The graph computes in float32; the source (and so the twin) returns float64."""
    train = frame(400, 0)
    y = np.exp(train["a"].to_numpy()) + train["b"].to_numpy() ** 2
    model = HistGradientBoostingRegressor(max_iter=20, loss=loss).fit(train, y)
    result, twin = twin_of(model, tmp_path, train)
    fresh = frame(300, 2)

    got, expected = np.asarray(twin.predict(fresh)), model.predict(fresh)
    assert got.dtype == expected.dtype == np.float64
    assert result.io.outputs[0].dtype == "float32"  # what onnxruntime hands back
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_gaussian_mixture_gates_every_output(store, tmp_path):
    """It was registered with ``parity_report.outputs: []``."""
    train = frame(400, 0)
    model = GaussianMixture(3, random_state=0).fit(train)
    result, twin = twin_of(model, tmp_path, train)

    compared = {o.role for o in result.parity.outputs}
    assert compared == {"label", "probabilities", "value"}
    assert result.parity.passed
    np.testing.assert_allclose(
        twin.predict(frame(200, 2), params={"predict_method": "predict_values"}),
        model.score_samples(frame(200, 2)),
        atol=1e-4,
        rtol=1e-3,
    )


def test_hist_gradient_boosting_with_string_labels_and_nan(store, tmp_path):
    train = frame(600, 0)
    train.loc[train.index[::9], "a"] = np.nan
    names = np.array(["low", "mid", "high"])[labels(train.fillna(0), 3)]
    model = HistGradientBoostingClassifier(max_iter=15).fit(train, names)
    result, twin = twin_of(model, tmp_path, train)
    fresh = frame(500, 2)
    fresh.loc[fresh.index[::4], "a"] = np.nan

    np.testing.assert_array_equal(twin.predict(fresh), model.predict(fresh))
    np.testing.assert_allclose(
        twin.predict(fresh, params={"predict_method": "predict_proba"}),
        model.predict_proba(fresh),
        atol=1e-6,
    )


# --------------------------------------------------------------------------- converter options
def _source(model) -> SourceModel:
    return SourceModel(model_uri="memory", flavor="sklearn", native=model, local_path="")


def test_converter_options_reach_skl2onnx_and_wrong_ones_are_refused():
    train = frame(200, 0)
    names = np.where(labels(train, 2) == 1, "yes", "no")
    model = make_pipeline(StandardScaler(), LinearSVC()).fit(train, names)
    converter = SklearnConverter()

    def label_type(extra: dict) -> int:
        converted = converter.convert(_source(model), train, ConversionOptions(extra=extra))
        label = next(o for o in converted.io.outputs if o.role == "label")
        out = next(o for o in converted.onnx_model.graph.output if o.name == label.name)
        return out.type.tensor_type.elem_type

    # nocl=True makes skl2onnx emit class indices (int64) instead of the string labels
    assert label_type({}) == onnx.TensorProto.STRING
    assert label_type({"converter_options": {"LinearSVC": {"nocl": True}}}) == (
        onnx.TensorProto.INT64
    )
    with pytest.raises(InvalidInputError, match="'TfidfVectorizer'.*does not contain"):
        converter.convert(
            _source(model),
            train,
            ConversionOptions(extra={"converter_options": {"TfidfVectorizer": {"locale": "C"}}}),
        )
    with pytest.raises(
        InvalidInputError, match=r"sklearn\.preprocessing.*StandardScaler.*accepted"
    ):
        converter.convert(
            _source(model),
            train,
            ConversionOptions(extra={"converter_options": {"StandardScaler": {"nope": 1}}}),
        )


# --------------------------------------------------------------------------- refusals
def test_unsupported_estimator_names_its_class_path_and_what_to_do():
    train = frame(100, 0)
    model = make_pipeline(ClipTransformer(), LinearSVC()).fit(train, labels(train, 2))

    with pytest.raises(UnsupportedModelError) as err:
        SklearnConverter().convert(_source(model), train, ConversionOptions())

    message = err.value.message
    assert f"{ClipTransformer.__module__}.ClipTransformer" in message
    assert "serve the source model" in message
    assert "atol" not in message and "rtol" not in message


def test_a_converter_failure_is_reported_once_through_the_float32_retry():
    """A failure in float64 and again in float32 used to repeat the same skl2onnx text."""
    train = frame(100, 0)
    model = make_pipeline(StandardScaler(), SVC(kernel=_kernel)).fit(train, labels(train, 2))

    with pytest.raises(ConversionError) as err:
        SklearnConverter().convert(_source(model), train, ConversionOptions())

    message = err.value.message
    assert "sklearn.svm._classes.SVC" in message
    sentences = [s.strip() for s in message.replace(";", ".").split(".") if len(s.strip()) > 20]
    assert len(sentences) == len(set(sentences)), message
    assert "Relax" not in message


def _kernel(x, y):
    return x @ y.T
