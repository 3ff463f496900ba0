"""The ``mlflow_deploy_plugins`` flavor: saved by ConversionResult.save, loaded by mlflow.pyfunc."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import skl2onnx
from helpers import (
    CATEGORICAL,
    NUMERIC,
    log_sklearn,
    mixed_data,
    mixed_pipeline,
    tracking_store,
)
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression

import mlflow_deploy_plugins
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.onnx import FLAVOR_NAME
from mlflow_deploy_plugins.onnx import load_model as load_ours

REFERENCE_ROWS = 50


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("flavor-store")) as uri:
        yield uri


def _convert_and_save(model, example, sample, path, **kwargs):
    info = log_sklearn(model, example, **kwargs)
    result = mlflow_deploy_plugins.convert(
        info.model_uri, sample=sample, reference_rows=REFERENCE_ROWS
    )
    result.save(str(path))
    return SimpleNamespace(model=model, info=info, result=result, path=str(path), sample=sample)


@pytest.fixture(scope="module")
def clf(store, tmp_path_factory):
    """Mixed numeric/string pipeline classifier with bool labels."""
    frame, target = mixed_data()
    model = mixed_pipeline(GradientBoostingClassifier(n_estimators=20, random_state=0))
    model.fit(frame, target)
    return _convert_and_save(model, frame.head(5), frame, tmp_path_factory.mktemp("clf") / "m")


@pytest.fixture(scope="module")
def proba_source(store, tmp_path_factory):
    """Source logged with pyfunc_predict_fn='predict_proba'."""
    frame, target = mixed_data()
    model = mixed_pipeline(LogisticRegression(max_iter=500)).fit(frame, target)
    path = tmp_path_factory.mktemp("proba") / "m"
    return _convert_and_save(model, frame.head(5), frame, path, pyfunc_predict_fn="predict_proba")


@pytest.fixture(scope="module")
def array_regressor(store, tmp_path_factory):
    """Numeric model trained and logged with numpy arrays (tensor signature)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6))
    y = x[:, 0] * 2 + x[:, 1] ** 2
    model = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    path = tmp_path_factory.mktemp("reg") / "m"
    return _convert_and_save(model, x[:5], x, path)


@pytest.fixture(scope="module")
def array_classifier(store, tmp_path_factory):
    """Bare classifier on one float32 matrix: label + [N, 2] probabilities, ZipMap off."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    return _convert_and_save(model, x[:5], x, tmp_path_factory.mktemp("aclf") / "m")


# --------------------------------------------------------------------------- the MLmodel
def test_mlmodel_keeps_onnx_flavor_and_adds_ours(clf):
    mlmodel = Model.load(clf.path)
    assert mlmodel.flavors["onnx"]["data"] == "model.onnx"
    assert mlmodel.flavors["python_function"]["loader_module"] == (
        "mlflow_deploy_plugins.onnx.flavor"
    )
    assert isinstance(mlflow.onnx.load_model(clf.path), onnx.ModelProto)

    conf = mlmodel.flavors[FLAVOR_NAME]
    assert conf["schema_version"] == 1
    assert conf["source"]["model_uri"] == clf.info.model_uri
    assert conf["source"]["flavor"] == "sklearn"
    assert conf["source"]["run_id"] == clf.info.run_id
    assert conf["converter"]["name"] == "skl2onnx"
    assert conf["converter"]["version"] == skl2onnx.__version__
    assert conf["converter"]["options_hash"] == clf.result.options.fingerprint()
    assert conf["opsets"]["ai.onnx"] >= 1 and "ai.onnx.ml" in conf["opsets"]
    assert conf["parity"]["passed"] is True
    assert conf["parity"]["rows"] == len(clf.sample) + conf["parity"]["missing_value_rows"]
    assert conf["parity"]["sample_origin"] == "caller"
    assert conf["parity"]["metrics"]["parity.label.label_agreement"] == 1.0
    assert conf["optimization"]["level"] == "basic"
    assert conf["optimization"]["onnxruntime_version"]
    # the DataFrame column -> ONNX input mapping
    mapping = {i["name"]: (i["columns"], i["dtype"]) for i in conf["io"]["inputs"]}
    assert mapping == {
        **{c: ([c], "float64") for c in NUMERIC},
        **{c: ([c], "string") for c in CATEGORICAL},
    }
    assert {o["role"] for o in conf["io"]["outputs"]} == {"label", "probabilities"}
    with open(f"{clf.path}/{conf['parity']['report']}") as f:
        assert json.load(f)["passed"] is True


def test_signature_and_input_example_recorded(clf):
    mlmodel = Model.load(clf.path)
    assert mlmodel.signature.inputs.input_names() == NUMERIC + CATEGORICAL
    assert [p.name for p in mlmodel.signature.params] == ["predict_method"]
    example = mlmodel.load_input_example(clf.path)
    assert list(example.columns) == NUMERIC + CATEGORICAL and len(example) == 5


# --------------------------------------------------------------------------- the pyfunc
def test_pyfunc_takes_a_mixed_dataframe_in_any_column_order(clf):
    ours = mlflow.pyfunc.load_model(clf.path)
    source = mlflow.pyfunc.load_model(clf.info.model_uri)
    shuffled = clf.sample[["plan", "tenure", "city", "income", "age"]].assign(extra=1.5)

    got = ours.predict(shuffled)
    expected = source.predict(clf.sample)

    assert type(got) is type(expected) and got.dtype.kind == expected.dtype.kind == "b"
    np.testing.assert_array_equal(got, expected)


def test_pyfunc_takes_a_dict_of_arrays(clf):
    ours = mlflow.pyfunc.load_model(clf.path)
    data = {c: clf.sample[c].to_numpy() for c in clf.sample.columns}
    np.testing.assert_array_equal(ours.predict(data), clf.model.predict(clf.sample))


def test_predict_proba_param_matches_source(clf):
    ours = mlflow.pyfunc.load_model(clf.path)
    native = mlflow.sklearn.load_model(clf.info.model_uri)
    proba = ours.predict(clf.sample, params={"predict_method": "predict_proba"})
    assert proba.shape == (len(clf.sample), 2)
    np.testing.assert_allclose(proba, native.predict_proba(clf.sample), atol=1e-5)


def test_source_logged_with_predict_proba_gives_probabilities_by_default(proba_source):
    ours = mlflow.pyfunc.load_model(proba_source.path)
    source = mlflow.pyfunc.load_model(proba_source.info.model_uri)
    got, expected = ours.predict(proba_source.sample), source.predict(proba_source.sample)
    assert got.shape == expected.shape == (len(proba_source.sample), 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    conf = Model.load(proba_source.path).flavors[FLAVOR_NAME]
    assert conf["source"]["pyfunc_predict_fn"] == "predict_proba"
    assert conf["io"]["default_role"] == "probabilities"


def test_regressor_takes_numpy_arrays_and_returns_values(array_regressor):
    ours = mlflow.pyfunc.load_model(array_regressor.path)
    source = mlflow.pyfunc.load_model(array_regressor.info.model_uri)
    x = array_regressor.sample

    got, expected = ours.predict(x), source.predict(x)

    assert got.shape == expected.shape == (len(x),) and got.dtype.kind == expected.dtype.kind
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert Model.load(array_regressor.path).signature.inputs.is_tensor_spec()


def test_zipmap_off_classifier_works_where_mlflow_onnx_pyfunc_breaks(array_classifier, tmp_path):
    x = array_classifier.sample
    ours = mlflow.pyfunc.load_model(array_classifier.path)
    np.testing.assert_array_equal(ours.predict(x), array_classifier.model.predict(x))
    np.testing.assert_allclose(
        ours.predict(x, params={"predict_method": "predict_proba"}),
        array_classifier.model.predict_proba(x),
        atol=1e-5,
    )

    # The very same graph through MLflow's own onnx flavor pyfunc:
    graph = mlflow.onnx.load_model(array_classifier.path)
    mlflow.onnx.save_model(graph, str(tmp_path / "plain-onnx"))
    theirs = mlflow.pyfunc.load_model(str(tmp_path / "plain-onnx"))
    with pytest.raises(ValueError, match="All arrays must be of the same length"):
        theirs.predict(pd.DataFrame(x.astype(np.float32)))


def test_log_model_then_load_by_runs_uri(clf, store):
    with mlflow.start_run() as run:
        info = mlflow_deploy_plugins.onnx.log_model(clf.result, name="onnx")
    loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/onnx")
    assert info.model_uri
    np.testing.assert_array_equal(loaded.predict(clf.sample), clf.model.predict(clf.sample))


# --------------------------------------------------------------------------- evidence
def test_reference_sample_is_bounded_and_has_predictions(clf):
    conf = Model.load(clf.path).flavors[FLAVOR_NAME]
    reference = pd.read_parquet(f"{clf.path}/{conf['reference_sample']}")

    assert len(reference) == conf["reference_rows"] == REFERENCE_ROWS < len(clf.sample)
    assert list(reference.columns) == [
        *NUMERIC,
        *CATEGORICAL,
        "prediction",
        "proba_False",
        "proba_True",
    ]
    inputs = reference[NUMERIC + CATEGORICAL]
    np.testing.assert_array_equal(
        reference["prediction"].astype(bool), clf.model.predict(inputs).astype(bool)
    )
    np.testing.assert_allclose(
        reference[["proba_False", "proba_True"]], clf.model.predict_proba(inputs), atol=1e-5
    )


def test_tampered_model_file_is_refused(clf, array_regressor, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(clf.path, tampered)
    # a perfectly valid ONNX model, just not the verified one
    shutil.copyfile(f"{array_regressor.path}/model.onnx", tampered / "model.onnx")

    with pytest.raises(MlflowException, match="sha256") as err:
        mlflow.pyfunc.load_model(str(tampered))
    assert "modified after it was verified" in err.value.message
    with pytest.raises(InvalidInputError, match="sha256"):
        load_ours(str(tampered))


# --------------------------------------------------------------------------- bad input
def test_missing_column_is_named(clf):
    ours = mlflow.pyfunc.load_model(clf.path)
    with pytest.raises(MlflowException, match="missing inputs \\['income'\\]"):
        ours.predict(clf.sample.drop(columns=["income"]))
    # our own check, e.g. without MLflow's schema enforcement in front of it
    with pytest.raises(InvalidInputError, match="Missing column\\(s\\) \\['income'\\]"):
        load_ours(clf.path).predict(clf.sample.drop(columns=["income"]))


def test_string_in_numeric_column_is_named(clf):
    ours = mlflow.pyfunc.load_model(clf.path)
    bad = clf.sample.head(3).astype({"age": object})
    bad.loc[1, "age"] = "forty"
    with pytest.raises(MlflowException, match="column age"):
        ours.predict(bad)
    with pytest.raises(InvalidInputError, match="Column 'age'.*'forty'"):
        load_ours(clf.path).predict(bad)


def test_zero_rows_get_an_empty_answer_of_the_outputs_type(tmp_path):
    # onnxruntime fails on 0 rows in some graphs (a scaler + logistic regression's
    # ArrayFeatureExtractor) and answers empty in others: the twin answers empty for all
    import mlflow
    from helpers import log_sklearn, tracking_store
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import mlflow_deploy_plugins

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=list("abc"))
    model = make_pipeline(StandardScaler(), LogisticRegression())
    model.fit(frame, np.where(frame.a > 0, "yes", "no"))
    with tracking_store(tmp_path):
        result = mlflow_deploy_plugins.convert(
            log_sklearn(model, frame.head(5)).model_uri, sample=frame
        )
        result.save(str(tmp_path / "twin"))
        twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))
        labels = twin.predict(frame.head(0))
        proba = twin.predict(frame.head(0), params={"predict_method": "predict_proba"})
        one = twin.predict(frame.head(1))
    assert labels.shape == (0,) and labels.dtype == one.dtype
    assert proba.shape == (0, 2)
