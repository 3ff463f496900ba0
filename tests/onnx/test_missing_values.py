"""Issue 11: missing values exactly like the source. Trees route NaN like scikit-learn; where the
source refuses NaN the twin refuses it too (pyfunc), naming the column; old twins refuse."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from helpers import log_sklearn, mixed_data, mixed_pipeline, tracking_store
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.tree import DecisionTreeClassifier

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.iospec import IOSpec, SchemaError
from mlflow_deploy_plugins.errors import InvalidInputError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("missing-store")) as uri:
        yield uri


def twin(result, tmp_path):
    path = str(tmp_path / "twin")
    result.save(path)
    return mlflow.pyfunc.load_model(path)


def with_nan(frame, columns, share=0.3, seed=5):
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    for c in columns:
        frame.loc[rng.random(len(frame)) < share, c] = np.nan
    return frame


def numeric_data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    frame = __import__("pandas").DataFrame(x, columns=["a", "b", "c", "d"])
    return frame, x[:, 0] + x[:, 1] ** 2 - x[:, 2]


TREES = {
    "RandomForestClassifier": lambda: RandomForestClassifier(n_estimators=15, random_state=0),
    "ExtraTreesClassifier": lambda: ExtraTreesClassifier(n_estimators=15, random_state=0),
    "DecisionTreeClassifier": lambda: DecisionTreeClassifier(random_state=0),
    "RandomForestRegressor": lambda: RandomForestRegressor(n_estimators=15, random_state=0),
}


@pytest.mark.parametrize("kind", list(TREES))
def test_trees_trained_without_nan_route_nan_like_sklearn(store, tmp_path, kind):
    frame, y = numeric_data()
    estimator = TREES[kind]()
    model = estimator.fit(frame, y > 0 if "Classifier" in kind else y)
    info = log_sklearn(model, frame.head(5))
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame)
    fresh, _ = numeric_data(800, seed=9)
    fresh = with_nan(fresh, ["a", "b", "c", "d"])
    expected = model.predict(fresh)
    got = twin(result, tmp_path).predict(fresh)
    if "Classifier" in kind:
        assert np.mean(np.asarray(got) == expected) == 1.0
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the gate saw such rows: the source accepts NaN in every column
    assert set(result.io.accepts_missing) == {"a", "b", "c", "d"}
    assert result.parity.missing_value_rows > 0 and result.parity.passed


def test_column_transformer_forest_routes_nan(store, tmp_path):
    frame, target = mixed_data(500)
    model = mixed_pipeline(RandomForestClassifier(n_estimators=15, random_state=0))
    model.fit(frame, target)
    result = mlflow_deploy_plugins.convert(
        log_sklearn(model, frame.head(5)).model_uri, sample=frame
    )
    fresh = with_nan(mixed_data(600, seed=3)[0], ["age", "income"])
    got = twin(result, tmp_path).predict(fresh)
    assert np.mean(np.asarray(got) == model.predict(fresh)) == 1.0


def test_nan_where_the_source_refuses_is_refused_naming_the_column(store, tmp_path):
    frame, target = mixed_data(400)
    model = mixed_pipeline(LogisticRegression(max_iter=500)).fit(frame, target)
    result = mlflow_deploy_plugins.convert(
        log_sklearn(model, frame.head(5)).model_uri, sample=frame
    )
    assert not set(result.io.accepts_missing) & {"age", "income", "tenure"}
    bad = frame.head(4).copy()
    bad.loc[2, "income"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict(bad)  # the source refuses ...
    pyfunc = twin(result, tmp_path)
    for method in (None, "predict_proba"):
        with pytest.raises(Exception, match="'income' contains missing values") as e:
            pyfunc.predict(bad, params={"predict_method": method} if method else None)
        assert isinstance(e.value, InvalidInputError) or "income" in str(e.value)
    with pytest.raises(InvalidInputError, match="'income'"):
        row = {"age": [1.0], "income": [None], "tenure": [1.0], "city": ["x"], "plan": ["y"]}
        pyfunc.get_raw_model().predict(row)


def test_regressor_refuses_nan_instead_of_answering_nan(store, tmp_path):
    frame, y = numeric_data(300)
    model = Ridge().fit(frame, y)
    result = mlflow_deploy_plugins.convert(
        log_sklearn(model, frame.head(5)).model_uri, sample=frame
    )
    bad = frame.head(3).copy()
    bad.loc[1, "c"] = np.nan
    pyfunc = twin(result, tmp_path)
    with pytest.raises(InvalidInputError, match="'c' contains missing values"):
        pyfunc.predict(bad)
    with pytest.raises(InvalidInputError, match="'c' contains missing values"):
        pyfunc.get_raw_model().predict(bad.to_numpy())  # the matrix path too


def test_imputer_pipeline_accepts_nan_and_matches(store, tmp_path):
    frame, target = mixed_data(400)
    model = mixed_pipeline(LogisticRegression(max_iter=500), imputer=True).fit(frame, target)
    result = mlflow_deploy_plugins.convert(
        log_sklearn(model, frame.head(5)).model_uri, sample=frame
    )
    assert {"age", "income", "tenure"} <= set(result.io.accepts_missing)
    fresh = with_nan(mixed_data(300, seed=4)[0], ["age", "income", "tenure"])
    got = twin(result, tmp_path).predict(fresh)
    assert np.mean(np.asarray(got) == model.predict(fresh)) == 1.0


def test_a_twin_built_before_the_record_refuses_missing_values():
    io = IOSpec.from_dict(
        {
            "inputs": [
                {"name": "X", "columns": ["a", "b"], "dtype": "float32", "shape": [None, 2]}
            ],
            "outputs": [{"name": "variable", "dtype": "float32", "role": "value"}],
        }
    )
    assert io.accepts_missing == ()
    with pytest.raises(SchemaError, match="'b' contains missing values") as e:
        io.encode_matrix(np.array([[1.0, np.nan]]))
    assert e.value.field == "b"
    with pytest.raises(SchemaError, match="'a'"):
        io.encode_columns({"a": [None, 1.0], "b": [1.0, 2.0]})
    accepting = IOSpec.from_dict({**io.to_dict(), "accepts_missing": ["b"]})
    assert np.isnan(accepting.encode_matrix(np.array([[1.0, np.nan]]))["X"][0, 1])


def test_onnx_source_answers_nan_so_the_twin_does_too(store, tmp_path):
    """An ONNX source runs NaN through onnxruntime: the probe asks the source, not our encoder."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    frame, y = numeric_data(200)
    clf = LogisticRegression().fit(frame.to_numpy(), y > 0)
    onx = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, 4]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(clf): {"zipmap": False}},
    )
    mlflow.onnx.save_model(onx, str(tmp_path / "onnx-source"))
    result = mlflow_deploy_plugins.convert(str(tmp_path / "onnx-source"), sample=frame)
    assert set(result.io.accepts_missing) == set(result.io.columns)
    assert result.parity.missing_value_rows > 0 and result.parity.passed


def test_per_column_probing_only_where_columns_meet_different_steps():
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from mlflow_deploy_plugins.onnx.converters._missing import uniform_missing_handling
    from mlflow_deploy_plugins.onnx.converters.sklearn import iter_estimators

    def steps(model):
        return list(iter_estimators(model))

    assert uniform_missing_handling(
        steps(make_pipeline(StandardScaler(), GradientBoostingClassifier()))
    )
    assert not uniform_missing_handling(steps(mixed_pipeline(LogisticRegression())))
    assert not uniform_missing_handling(
        steps(make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()))
    )
