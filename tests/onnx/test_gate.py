"""Issue 11: the parity gate compares every served output, fails on nothing compared, counts
NaN == NaN, refuses structural failures without tolerance advice, and gathers its own evidence."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import log_sklearn, mixed_data, mixed_pipeline, tracking_store
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.svm import SVC, LinearSVC

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, VALUE, IOSpec, OutputSpec
from mlflow_deploy_plugins.errors import InvalidInputError, ParityError
from mlflow_deploy_plugins.onnx import parity


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("gate-store")) as uri:
        yield uri


def _io(*outputs: OutputSpec) -> IOSpec:
    return IOSpec(inputs=(), outputs=outputs, task="regression")


def _compare(reference, candidate, io):
    return parity.compare(
        reference,
        candidate,
        io,
        parity.Tolerances(),
        variant="test",
        sample_origin="caller",
        small_sample=False,
    )


def test_zero_compared_outputs_fail_the_gate():
    report = _compare({VALUE: np.ones(3)}, {}, _io())
    assert not report.passed
    assert "no output was compared" in report.structural
    with pytest.raises(ParityError) as e:
        parity.enforce(report, "sklearn.mixture.GaussianMixture")
    assert "GaussianMixture" in e.value.message and "atol" in e.value.message
    assert "Relax" not in e.value.message


def test_a_served_output_without_a_source_counterpart_fails():
    io = _io(
        OutputSpec("label", "int64", LABEL), OutputSpec("probabilities", "float32", "probabilities")
    )
    labels = np.array([0, 1, 1])
    report = _compare({LABEL: labels}, {LABEL: labels, PROBABILITIES: np.ones((3, 2))}, io)
    assert not report.passed
    not_compared = [o for o in report.outputs if o.role == PROBABILITIES][0]
    assert not_compared.method == "not compared" and "no 'probabilities'" in not_compared.structural


def test_nan_equal_counts_as_equal_values_and_labels():
    ref = np.array([1.0, np.nan, 3.0, np.nan])
    report = _compare({VALUE: ref}, {VALUE: ref.copy()}, _io(OutputSpec("variable", "float64")))
    assert report.passed, report.to_dict()
    assert report.outputs[0].max_abs_error == 0.0
    one_sided = _compare(
        {VALUE: ref},
        {VALUE: np.array([1.0, 2.0, 3.0, np.nan])},
        _io(OutputSpec("variable", "float64")),
    )
    assert not one_sided.passed and one_sided.outputs[0].mismatches == 1
    labels = _compare({LABEL: ref}, {LABEL: ref.copy()}, _io(OutputSpec("label", "float64", LABEL)))
    assert labels.passed and labels.outputs[0].label_agreement == 1.0


def test_report_lists_what_was_compared_and_how():
    io = IOSpec(
        inputs=(),
        outputs=(
            OutputSpec("label", "int64", LABEL),
            OutputSpec("probabilities", "float32", PROBABILITIES),
        ),
        task="classification",
        default_role=LABEL,
    )
    labels, proba = np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]])
    report = _compare(
        {LABEL: labels, PROBABILITIES: proba}, {LABEL: labels, PROBABILITIES: proba}, io
    )
    by_role = {o["role"]: o for o in report.to_dict()["outputs"]}
    assert by_role[LABEL]["method"] == parity.LABEL_METHOD
    assert by_role[PROBABILITIES]["method"] == parity.VALUE_METHOD
    assert set(by_role[LABEL]["predict_methods"]) == {"predict", "predict_label"}
    assert by_role[PROBABILITIES]["predict_methods"] == ["predict_proba"]


def test_labels_against_scores_is_structural_not_a_tolerance():
    io = _io(OutputSpec("scores", "float32"))
    report = _compare(
        {VALUE: np.array([1, -1, 1, 1, -1])}, {VALUE: np.array([0.2, -0.1, 0.3, 0.1, -0.4])}, io
    )
    with pytest.raises(ParityError) as e:
        parity.enforce(report, "sklearn.ensemble.IsolationForest")
    assert "output kinds differ" in e.value.message and "Relax" not in e.value.message


# ----------------------------------------------------------------------- through convert()
def test_gaussian_mixture_passes_only_with_every_output_compared(store):
    """It was registered with ``parity_report.outputs: []``; the converter now serves its label,
    probabilities and score_samples, and the gate compares each (zero outputs: see above)."""
    x = np.random.default_rng(0).normal(size=(200, 3))
    model = GaussianMixture(n_components=2, random_state=0).fit(x)
    info = log_sklearn(model, x[:5])
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=x)
    assert {o.role for o in result.parity.outputs} == {LABEL, PROBABILITIES, VALUE}
    assert all(o.passed for o in result.parity.outputs) and result.parity.passed
    np.testing.assert_array_equal(_pyfunc(result, x[:50]), model.predict(x[:50]))


def test_isolation_forest_advice_is_never_to_relax(store):
    x = np.random.default_rng(0).normal(size=(300, 3))
    info = log_sklearn(IsolationForest(n_estimators=10, random_state=0).fit(x), x[:5])
    try:
        result = mlflow_deploy_plugins.convert(info.model_uri, sample=x)
    except ParityError as e:
        assert "IsolationForest" in e.message and "Relax" not in e.message
    else:  # a converter that maps IsolationForest's labels properly: predict must be +-1
        assert set(np.unique(_pyfunc(result, x))) <= {-1, 1}


def _pyfunc(result, rows, tmp=None, **params):
    import tempfile

    path = tempfile.mkdtemp(prefix="twin-")
    result.save(path + "/m")
    return mlflow.pyfunc.load_model(path + "/m").predict(rows, params=params or None)


@pytest.mark.parametrize("kind", ["SVC-pipeline", "LinearSVC-3-classes"])
def test_predict_proba_not_served_when_the_source_has_none(store, kind):
    frame, target = mixed_data(300)
    three_classes = target.astype(int) + (frame["city"] == "nice").to_numpy()  # 0, 1, 2
    if kind == "SVC-pipeline":
        model = mixed_pipeline(SVC(random_state=0)).fit(frame, target.astype(int))
    else:  # LinearSVC in a pipeline is the converter helper's (issue 11, item 4)
        frame = frame[["age", "income", "tenure"]]
        model = LinearSVC(random_state=0).fit(frame, three_classes)
    assert not hasattr(model, "predict_proba")
    info = log_sklearn(model, frame.head(5))
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame)
    # decision scores are served as what they are (value = decision_function), never as
    # probabilities; a binary SVC's [N, 2] scores narrowed to the source's 1-D column
    assert [o.role for o in result.io.outputs] == [LABEL, VALUE]
    assert [o.role for o in result.parity.outputs] == [LABEL, VALUE]
    assert result.io.extra["source_methods"] == {LABEL: "predict", VALUE: "decision_function"}
    with pytest.raises(InvalidInputError, match="predict_proba"):
        _pyfunc(result, frame.head(3), predict_method="predict_proba")
    fresh = frame.sample(50, random_state=1)
    np.testing.assert_allclose(
        _pyfunc(result, fresh, predict_method="predict_values"),
        model.decision_function(fresh),
        atol=1e-4,
        rtol=1e-3,
    )


def test_without_sample_or_dataset_a_1000_row_sample_is_synthesized(store):
    frame, target = mixed_data(300)
    model = mixed_pipeline(SVC(random_state=0)).fit(frame, target.astype(int))
    info = log_sklearn(model, frame.head(5))
    result = mlflow_deploy_plugins.convert(info.model_uri)
    report = result.parity
    assert report.rows >= 1000 and not report.small_sample
    assert report.sample_origin.startswith("synthesized from the input example (5 rows)")
    assert any("synthesized" in n and "1000 rows" in n for n in report.notes)
    # ranges and categories of the example, not a copy of it
    sample = result.sample_frame
    assert set(sample["city"]) <= set(frame.head(5)["city"])
    assert sample["age"].nunique() > 900


def test_synthesized_sample_keeps_signature_types():
    from mlflow_deploy_plugins.onnx.sample import synthesize

    example = pd.DataFrame(
        {"n": [1, 5, 3], "x": [0.5, 0.5, 0.5], "b": [True, False, True], "s": ["a", "b", "a"]}
    )
    grown, origin, note = synthesize(example)
    assert len(grown) == 1000 and grown["n"].dtype.kind == "i"
    assert grown["n"].between(1, 5).all() and grown["x"].nunique() > 900
    assert set(grown["b"]) == {True, False} and set(grown["s"]) == {"a", "b"}
    assert "1000 rows" in note and origin.startswith("synthesized")


def test_relative_error_is_reported_only_where_the_source_value_is_not_near_zero():
    # A random forest's probability of exactly 0 against onnxruntime's 1e-8: within atol, and the
    # relative error is not 1e-8 / 2.2e-308 (it was reported as 5e300 before).
    ref = np.array([[0.0, 1.0], [0.25, 0.75]])
    got = np.array([[1e-8, 1.0 - 1e-8], [0.25 + 2.5e-5, 0.75 - 2.5e-5]])
    io = _io(OutputSpec("probabilities", "float64", PROBABILITIES))
    report = _compare({PROBABILITIES: ref}, {PROBABILITIES: got}, io)
    assert report.passed, report.to_dict()
    out = report.outputs[0]
    assert out.max_abs_error == pytest.approx(2.5e-5)
    assert out.max_rel_error == pytest.approx(1e-4)  # 2.5e-5 / 0.25, the largest meaningful one
    # The gate itself is unchanged: 1e-3 where the source says 0 still fails (atol 1e-4).
    wrong = got.copy()
    wrong[0] = [1e-3, 1.0 - 1e-3]
    failing = _compare({PROBABILITIES: ref}, {PROBABILITIES: wrong}, io)
    assert not failing.passed and failing.outputs[0].mismatches == 1
