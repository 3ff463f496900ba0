"""scikit-learn -> ONNX through ``mlflow_deploy_plugins.convert`` on models logged to a real store."""

from __future__ import annotations

import mlflow
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from helpers import (
    CATEGORICAL,
    NUMERIC,
    ClipTransformer,
    float32_trap_data,
    log_sklearn,
    mixed_pipeline,
    numeric_pipeline,
    register_sklearn,
    skops_trusted_types,
    tracking_store,
)
from mlflow.exceptions import MlflowException
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import mlflow_deploy_plugins
from mlflow_deploy_plugins.errors import UnsupportedModelError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("sklearn-store")) as uri:
        yield uri


@pytest.fixture
def mixed_values(mixed_frame) -> np.ndarray:
    f = mixed_frame
    return (f.age * 0.1 + np.log(f.income) + (f.city == "lyon") * 2.0 - f.tenure * 0.05).to_numpy()


def run_onnx(result, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Run the converted graph with plain onnxruntime: output role -> array."""
    session = ort.InferenceSession(result.onnx_model.SerializeToString())
    feed = result.io.encode_columns({c: frame[c].to_numpy() for c in result.io.columns})
    names = [o.name for o in result.io.outputs]
    return {
        o.role: np.asarray(arr)
        for o, arr in zip(result.io.outputs, session.run(names, feed), strict=True)
    }


def assert_matches_source(result, model, frame: pd.DataFrame, classifier: bool) -> None:
    got = run_onnx(result, frame)
    if classifier:
        expected = model.predict(frame)
        assert (got["label"].reshape(-1).astype(expected.dtype) == expected).all()
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(frame), atol=1e-5)
    else:
        np.testing.assert_allclose(
            got["value"].reshape(-1), model.predict(frame), rtol=1e-5, atol=1e-5
        )


def assert_mixed_io(result) -> None:
    """One ONNX input per named column: float64 numbers, strings for the categoricals."""
    io = result.io
    assert [b.columns for b in io.inputs] == [(c,) for c in NUMERIC + CATEGORICAL]
    assert io.column_dtypes() == {
        **dict.fromkeys(NUMERIC, "float64"),
        **dict.fromkeys(CATEGORICAL, "string"),
    }


CLASSIFIERS = {
    "logistic_regression": lambda: LogisticRegression(max_iter=500),
    "decision_tree": lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    "random_forest": lambda: RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0),
    "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
}
REGRESSORS = {
    "linear_regression": LinearRegression,
    "ridge": Ridge,
    "decision_tree": lambda: DecisionTreeRegressor(max_depth=5, random_state=0),
    "random_forest": lambda: RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0),
    "gradient_boosting": lambda: GradientBoostingRegressor(n_estimators=20, random_state=0),
}


@pytest.mark.parametrize("make", CLASSIFIERS.values(), ids=CLASSIFIERS.keys())
def test_mixed_pipeline_classifier(store, mixed_frame, mixed_target, make):
    model = mixed_pipeline(make()).fit(mixed_frame, mixed_target)
    info = log_sklearn(model, mixed_frame.head(5))

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=mixed_frame)

    assert (
        result.parity.passed
        and result.parity.rows == len(mixed_frame) + result.parity.missing_value_rows
    )
    assert result.parity.sample_origin == "caller" and not result.parity.small_sample
    assert result.converter == "skl2onnx" and result.source.flavor == "sklearn"
    assert_mixed_io(result)
    assert result.io.task == "classification" and result.io.classes == (False, True)
    assert any("zipmap=False" in n for n in result.notes)
    assert any("div" in n for n in result.notes)
    # ZipMap off: probabilities are a plain [N, 2] tensor, not a sequence of maps
    probabilities = result.io.output_for("probabilities")
    assert probabilities.shape == (None, 2)
    assert_matches_source(result, model, mixed_frame, classifier=True)


@pytest.mark.parametrize("make", REGRESSORS.values(), ids=REGRESSORS.keys())
def test_mixed_pipeline_regressor(store, mixed_frame, mixed_values, make):
    model = mixed_pipeline(make()).fit(mixed_frame, mixed_values)
    info = log_sklearn(model, mixed_frame.head(5))

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=mixed_frame)

    assert result.parity.passed
    assert_mixed_io(result)
    assert result.io.task == "regression" and result.io.default_role == "value"
    assert result.io.output_for("value").shape == (None,)  # what the source returns
    assert_matches_source(result, model, mixed_frame, classifier=False)


@pytest.mark.parametrize(
    "make", [HistGradientBoostingClassifier, HistGradientBoostingRegressor], ids=["clf", "reg"]
)
def test_hist_gradient_boosting_in_a_pipeline_converts(store, mixed_frame, mixed_target, make):
    """skl2onnx 1.20 cannot build HistGradientBoosting* of scikit-learn 1.9; our converter
    (onnx/converters/hist_gradient_boosting.py) replaces it, also after a ColumnTransformer."""
    model = mixed_pipeline(make(max_iter=5)).fit(mixed_frame, mixed_target.astype(int))
    info = log_sklearn(model, mixed_frame.head(5))

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=mixed_frame)

    assert result.parity.passed
    assert {o.role for o in result.io.outputs} == (
        {"label", "probabilities"} if make is HistGradientBoostingClassifier else {"value"}
    )


def test_float32_trap_standard_scaler_then_tree(store):
    """(x-mean)*(1/scale) in float32 flips splits between values one ulp apart; ours does not."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    frame, y = float32_trap_data()
    model = numeric_pipeline(DecisionTreeClassifier(random_state=0)).fit(frame, y)
    tree = model.steps[-1][1]

    # By hand, the naive way: float32 input, skl2onnx's default scaler (no div option).
    naive = convert_sklearn(
        model,
        initial_types=[("X", FloatTensorType([None, 1]))],
        options={id(tree): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    labels = ort.InferenceSession(naive.SerializeToString()).run(
        None, {"X": frame.to_numpy(np.float32)}
    )[0]
    assert (labels != model.predict(frame)).sum() > 0, "the crafted data no longer shows the trap"

    info = log_sklearn(model, frame.head(5))
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame)

    assert result.parity.passed
    assert result.parity.outputs[0].label_agreement == 1.0
    assert any("div='div'" in n for n in result.notes)
    assert result.io.column_dtypes() == {"x": "float64"}
    assert_matches_source(result, model, frame, classifier=True)


def test_scaler_gradient_boosting_on_numeric_matrix(store, numeric_xy):
    """The benchmark model: StandardScaler + GradientBoosting on 20 unnamed-in-ONNX features."""
    x, y_reg, _ = numeric_xy
    model = numeric_pipeline(GradientBoostingRegressor(n_estimators=30, random_state=0))
    model.fit(x, y_reg)
    info = log_sklearn(model, x.head(5))

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=x)

    assert result.parity.passed
    assert len(result.io.inputs) == 1 and result.io.columns == list(x.columns)
    assert_matches_source(result, model, x, classifier=False)


@pytest.mark.parametrize("booster", ["lightgbm", "xgboost"])
def test_booster_inside_sklearn_pipeline(store, mixed_frame, mixed_target, booster):
    from skl2onnx._supported_operators import sklearn_operator_name_map

    if booster == "lightgbm":
        from lightgbm import LGBMClassifier as Classifier

        estimator = Classifier(n_estimators=20, num_leaves=8, verbose=-1)
    else:
        from xgboost import XGBClassifier as Classifier

        estimator = Classifier(n_estimators=20, max_depth=3)
    model = mixed_pipeline(estimator).fit(mixed_frame, mixed_target.astype(int))
    # skops cannot persist the boosters' native handles: cloudpickle, as MLflow users do
    info = log_sklearn(model, mixed_frame.head(5), serialization_format="cloudpickle")

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=mixed_frame)

    assert Classifier in sklearn_operator_name_map  # registered without the user's help
    assert result.parity.passed and result.source.flavor == "sklearn"
    assert_mixed_io(result)
    assert_matches_source(result, model, mixed_frame, classifier=True)


@pytest.mark.parametrize("fmt", ["skops", "pickle", "cloudpickle"])
def test_every_mlflow_sklearn_serialization_format(store, mixed_frame, mixed_target, fmt):
    model = mixed_pipeline(RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0))
    model.fit(mixed_frame, mixed_target)
    name = f"forest-{fmt}"
    version = register_sklearn(model, name, mixed_frame.head(5), serialization_format=fmt)
    conf = mlflow.models.Model.load(f"models:/{name}/{version}").flavors["sklearn"]
    assert conf["serialization_format"] == fmt
    if fmt == "skops":  # MLflow's default, refuses tree models unless their types are trusted
        assert "sklearn.tree._tree.Tree" in conf["skops_trusted_types"]

    result = mlflow_deploy_plugins.convert(f"models:/{name}/{version}", sample=mixed_frame)

    assert result.parity.passed
    assert (result.source.model_name, result.source.model_version) == (name, version)
    assert_matches_source(result, model, mixed_frame, classifier=True)


def test_runs_and_alias_uris(store, mixed_frame, mixed_target):
    model = mixed_pipeline(DecisionTreeClassifier(max_depth=3, random_state=0))
    model.fit(mixed_frame, mixed_target)
    info = log_sklearn(model, mixed_frame.head(5), registered_model_name="tree-uris")
    mlflow.MlflowClient().set_registered_model_alias("tree-uris", "current", "1")

    by_run = mlflow_deploy_plugins.convert(f"runs:/{info.run_id}/model", sample=mixed_frame)
    by_alias = mlflow_deploy_plugins.convert("models:/tree-uris@current", sample=mixed_frame)

    assert by_run.parity.passed and by_alias.parity.passed
    assert by_run.source.run_id == info.run_id and by_run.source.model_name is None
    assert (by_alias.source.model_name, by_alias.source.model_version) == ("tree-uris", "1")


def test_skops_tree_without_trusted_types_is_refused_at_log_time(store, numeric_xy):
    """Why the helpers pass skops_trusted_types: MLflow 3.17 refuses to log trees otherwise."""
    x, _, y = numeric_xy
    model = DecisionTreeClassifier(max_depth=2).fit(x, y)
    assert skops_trusted_types(model) == ["sklearn.tree._tree.Tree"]
    with mlflow.start_run(), pytest.raises(MlflowException, match="skops_trusted_types"):
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])


def test_custom_estimator_is_unsupported(store, numeric_xy):
    x, _, y = numeric_xy
    model = numeric_pipeline(LogisticRegression())
    model.steps.insert(1, ("clip", ClipTransformer()))
    model.fit(x, y)
    info = log_sklearn(model, x.head(5), serialization_format="cloudpickle")

    with pytest.raises(UnsupportedModelError) as err:
        mlflow_deploy_plugins.convert(info.model_uri, sample=x)

    assert "ClipTransformer" in err.value.message
    assert "Supported scikit-learn estimators include" in err.value.message
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_sklearn_estimator_without_onnx_converter_is_unsupported(store, numeric_xy):
    x, y_reg, _ = numeric_xy
    model = numeric_pipeline(KernelRidge(alpha=1.0)).fit(x, y_reg)
    info = log_sklearn(model, x.head(5))

    with pytest.raises(UnsupportedModelError, match="KernelRidge"):
        mlflow_deploy_plugins.convert(info.model_uri, sample=x)


def test_a_graph_onnxruntime_cannot_run_is_a_conversion_error_naming_the_model(store):
    # skl2onnx converts infrequent categories over two columns into a OneHotEncoder node that
    # onnxruntime refuses at run time: a ConversionError naming the estimator and the cause, not
    # onnxruntime's bare message
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from mlflow_deploy_plugins.errors import ConversionError

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=600),
            "city": rng.choice(["paris", "lyon", "nice", "brest"], 600, p=[0.4, 0.3, 0.25, 0.05]),
            "plan": rng.choice(["basic", "pro", "ent"], 600),
        }
    )
    encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=40)
    columns = ColumnTransformer([("n", "passthrough", ["x"]), ("c", encoder, ["city", "plan"])])
    model = make_pipeline(columns, LogisticRegression()).fit(frame, frame.x > 0)
    info = log_sklearn(model, frame.head(5))
    with pytest.raises(ConversionError) as err:
        mlflow_deploy_plugins.convert(info.model_uri, sample=frame)
    message = err.value.message
    assert "LogisticRegression" in message and "fails in onnxruntime" in message
    assert "OneHotEncoder" in message


@pytest.mark.parametrize("imputed", [["age"], ["age", "income"]])
def test_simple_imputer_over_an_integer_column_converts(store, imputed):
    # skl2onnx's imputer takes float inputs only: an int64 column handed to it failed to
    # convert ("Inputs and outputs should have the same type"); it enters the graph as float64
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 300), "income": rng.normal(5e4, 1e4, 300)})
    frame.loc[::10, "income"] = np.nan
    columns = ColumnTransformer(
        [("num", SimpleImputer(), imputed)], remainder="passthrough"
    ).set_output(transform="default")
    model = make_pipeline(columns, LogisticRegression(max_iter=1000))
    if imputed == ["age"]:
        frame["income"] = frame["income"].fillna(5e4)  # passthrough: no NaN for the estimator
    model.fit(frame, frame.age > 40)
    info = log_sklearn(model, frame.head(5))
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame)
    assert result.parity.passed
    assert {b.name: b.dtype for b in result.io.inputs}["age"] == "float64"
    fresh = pd.DataFrame({"age": rng.integers(18, 80, 50), "income": rng.normal(5e4, 1e4, 50)})
    session = ort.InferenceSession(result.onnx_model.SerializeToString())
    feed = result.io.encode_columns({c: fresh[c].to_numpy() for c in result.io.columns})
    labels = session.run([result.io.outputs[0].name], feed)[0]
    np.testing.assert_array_equal(labels.astype(bool), model.predict(fresh))


def test_distance_and_likelihood_estimators_compute_in_float64(store):
    # fed float32, KMeans answered another cluster at 1e8, KNN another value at 1e15 and
    # GaussianNB NaN probabilities at 1e20 (found on a model zoo); scikit-learn computes in float64
    from sklearn.cluster import KMeans
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsRegressor

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(2, 3, size=400)})
    classes = pd.cut(frame.a + 0.3 * frame.b, 3, labels=False).astype(int)
    cases = [
        (GaussianNB().fit(frame, classes), 1e20, "predict_proba"),
        (KMeans(4, random_state=0, n_init=3).fit(frame), 1e8, "predict"),
        (KNeighborsRegressor(5).fit(frame, frame.a + frame.b), 1e15, "predict"),
    ]
    for model, far, method in cases:
        result = mlflow_deploy_plugins.convert(
            log_sklearn(model, frame.head(5)).model_uri, sample=frame
        )
        assert {b.dtype for b in result.io.inputs} == {"float64"}, type(model).__name__
        rows = pd.DataFrame({"a": [0.1, 0.1], "b": [far, 0.5]})
        session = ort.InferenceSession(result.onnx_model.SerializeToString())
        feed = result.io.encode_columns({c: rows[c].to_numpy() for c in result.io.columns})
        role = {"predict_proba": "probabilities"}.get(method)
        spec = next(o for o in result.io.outputs if role is None or o.role == role)
        got = session.run([spec.name], feed)[0]
        expected = getattr(model, method)(rows)
        np.testing.assert_allclose(
            np.asarray(got, dtype=float).reshape(expected.shape), expected, rtol=1e-6
        )


def test_float32_fallback_when_float64_preprocessing_does_not_convert(store, numeric_xy):
    """PolynomialFeatures has no float64 ONNX graph onnxruntime runs: float32 inputs, noted."""
    from sklearn.preprocessing import PolynomialFeatures

    x, _, y = numeric_xy
    x = x.iloc[:, :5]
    model = numeric_pipeline(LogisticRegression(max_iter=500))
    model.steps.insert(0, ("poly", PolynomialFeatures(2)))
    model.fit(x, y)
    info = log_sklearn(model, x.head(5))

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=x)

    assert result.parity.passed
    assert result.io.column_dtypes() == dict.fromkeys(x.columns, "float32")
    assert any(n.startswith("float32 inputs: float64 preprocessing did not") for n in result.notes)
    assert_matches_source(result, model, x, classifier=True)


def test_simple_imputer_runs_in_float64(store, mixed_frame, mixed_target):
    """skl2onnx's Imputer op is float32-only in onnxruntime; ours replaces NaN in float64."""
    from xgboost import XGBClassifier

    model = mixed_pipeline(XGBClassifier(n_estimators=20, max_depth=3), imputer=True)
    sample = mixed_frame.copy()
    sample.loc[::7, "age"] = np.nan
    model.fit(sample, mixed_target.astype(int))
    info = log_sklearn(model, sample.head(5), serialization_format="cloudpickle")

    result = mlflow_deploy_plugins.convert(info.model_uri, sample=sample)

    assert result.parity.passed
    assert_mixed_io(result)
    assert not any(n.startswith("float32 inputs") for n in result.notes)
    assert_matches_source(result, model, sample, classifier=True)


@pytest.mark.parametrize("encoder", ["onehot", "onehot-in-pipeline", "ordinal"])
def test_an_encoder_refusing_unseen_categories_is_refused_like_the_source(store, tmp_path, encoder):
    """OneHotEncoder / OrdinalEncoder default to handle_unknown='error': the source raises on a
    category it never saw; skl2onnx's graph answers it (all zeros / a default code). The twin
    refuses it naming the column and the value; known categories are answered as before."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, OneHotEncoder, OrdinalEncoder

    from mlflow_deploy_plugins.errors import InvalidInputError

    rng = np.random.default_rng(2)
    x = pd.DataFrame({"age": rng.normal(40, 10, 400), "city": rng.choice(["lyon", "nice"], 400)})
    y = ((x.age - 40) / 10 + (x.city == "lyon") * 1.5 > 0).astype(int)
    encode = {
        "onehot": OneHotEncoder(),
        "onehot-in-pipeline": make_pipeline(OneHotEncoder(), MaxAbsScaler()),
        "ordinal": OrdinalEncoder(),
    }[encoder]
    columns = ColumnTransformer([("num", "passthrough", ["age"]), ("cat", encode, ["city"])])
    model = Pipeline([("columns", columns), ("lr", LogisticRegression())]).fit(x, y)
    fresh = x.head(10).copy()
    fresh.loc[fresh.index[3], "city"] = "paris"
    with pytest.raises(ValueError, match="unknown categor"):
        model.predict(fresh)
    uri = log_sklearn(model, x.head(3)).model_uri
    result = mlflow_deploy_plugins.convert(uri, sample=x)
    assert result.io.refused_categories == {"city": frozenset({"lyon", "nice"})}
    result.save(str(tmp_path / "twin"))
    twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))
    np.testing.assert_array_equal(np.asarray(twin.predict(x.head(10))), model.predict(x.head(10)))
    with pytest.raises(InvalidInputError, match="Column 'city' holds the category 'paris'"):
        twin.predict(fresh)
