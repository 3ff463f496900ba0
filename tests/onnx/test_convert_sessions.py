"""Issue 11 (conversion speed): a conversion builds one onnxruntime session per distinct graph
and runs the saved graph once over the gate sample: the gate, the latency figures and the
reference sample share that run, and no check is dropped for it.

Sessions are counted with a subclass of onnxruntime's ``InferenceSession`` that counts, then
builds the real session (onnxruntime runs as usual)."""

from __future__ import annotations

import lightgbm
import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import pytest
from helpers import PIP, log_sklearn, tracking_store
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.session import make_session, run_by_role
from mlflow_deploy_plugins.onnx.convert import load_source


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("sessions-store")) as uri:
        yield uri


@pytest.fixture()
def sessions(monkeypatch):
    """The number of onnxruntime sessions built so far in the test (a one-element list)."""
    count = [0]
    real = onnxruntime.InferenceSession

    class Counting(real):
        def __init__(self, *args, **kwargs):
            count[0] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    return count


def _data(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    return x, (x.a - x.b + 0.3 * x.c > 0).astype(int).to_numpy()


def _scaled_boosting(x, y):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=20))
    return log_sklearn(model.fit(x, y), x.head(3)).model_uri


def _forest_accepting_nan(x, y):
    # sklearn trees route NaN: the probe finds that, the gate adds missing-value rows
    model = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0)
    return log_sklearn(model.fit(x, x.a * 2 + y), x.head(3)).model_uri


def _lightgbm(x, y):
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y)
    with mlflow.start_run():
        return mlflow.lightgbm.log_model(model, name="model", pip_requirements=PIP).model_uri


def _onnx_source(x, y):
    """An ONNX model logged with mlflow.onnx: passed through; the source is a graph too."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(x.to_numpy(np.float32), y)
    onx = to_onnx(model, x.to_numpy(np.float32)[:1], options={"zipmap": False})
    with mlflow.start_run():
        return mlflow.onnx.log_model(onx, name="model", pip_requirements=["onnx"]).model_uri


@pytest.mark.parametrize(
    "log, graphs",
    [
        (_scaled_boosting, 2),  # the converter's graph, the saved (optimised) graph
        (_forest_accepting_nan, 2),
        (_lightgbm, 2),
        (_onnx_source, 3),  # + the source graph, loaded once for every reference run
    ],
    ids=["pipeline", "forest-with-missing-rows", "lightgbm", "onnx-passthrough"],
)
def test_a_conversion_builds_one_session_per_graph(store, sessions, log, graphs):
    x, y = _data()
    uri = log(x, y)
    source = load_source(uri)
    before = sessions[0]
    result = mlflow_deploy_plugins.convert(uri, sample=x, source=source)
    assert sessions[0] - before == graphs  # main before this change: 6 and more
    # nothing skipped for it: every served output compared, the probe ran, latency measured
    assert result.parity.passed
    assert [o.role for o in result.parity.outputs] == [o.role for o in result.io.outputs]
    assert any("missing values in" in note for note in result.notes)
    assert result.optimization.before.latency_ms_100_rows is not None
    assert result.optimization.after.latency_ms_100_rows is not None


def test_missing_value_rows_are_still_gated(store):
    x, y = _data()
    result = mlflow_deploy_plugins.convert(_forest_accepting_nan(x, y), sample=x)
    assert result.io.accepts_missing == tuple(x.columns)
    assert result.parity.missing_value_rows > 0
    assert result.parity.rows == len(x) + result.parity.missing_value_rows


def test_quantized_conversion_loads_each_graph_once(store, sessions):
    x, y = _data()
    uri = _scaled_boosting(x, y)
    source = load_source(uri)
    before = sessions[0]
    result = mlflow_deploy_plugins.convert(uri, sample=x, source=source, quantize=True)
    assert sessions[0] - before == 2  # the converter's graph, the quantised graph
    assert result.parity.variant.endswith("+int8")


def test_reference_sample_holds_the_saved_models_predictions_on_uniform_rows(store):
    """The sample's predictions come from the gate's run of the saved graph: they equal a fresh
    session's on the same rows (to float32 rounding), and the rows are the ones
    ``DataFrame.sample`` picks."""
    from mlflow_deploy_plugins.onnx.convert import reference_rows_of

    x, y = _data(900, seed=3)
    result = mlflow_deploy_plugins.convert(_scaled_boosting(x, y), sample=x, reference_rows=250)
    sample = result.reference_sample
    expected_rows = x.sample(n=250, random_state=0).reset_index(drop=True)
    pd.testing.assert_frame_equal(sample[list(x.columns)], expected_rows)
    np.testing.assert_array_equal(reference_rows_of(x, 250), x.sample(250, random_state=0).index)

    session = make_session(result.onnx_model.SerializeToString())
    feed = result.io.encode_columns({c: expected_rows[c].to_numpy() for c in result.io.columns})
    fresh = run_by_role(session, result.io, feed)
    np.testing.assert_array_equal(sample["prediction"].to_numpy(), fresh["label"])
    # float32 sums over trees: another batch size or thread count may round the last bit
    np.testing.assert_allclose(
        sample["proba_1"].to_numpy(), fresh["probabilities"][:, 1], rtol=0, atol=1e-6
    )
