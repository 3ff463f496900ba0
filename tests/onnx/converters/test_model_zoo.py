"""The support matrix, measured: every zoo case (``zoo.py``) is logged with the sklearn flavor,
converted through ``mlflow_deploy_plugins.convert`` on a gate sample of fresh rows, saved, loaded
back as an MLflow pyfunc and compared with the source on other fresh rows, output by output,
for every ``predict_method`` the twin serves. docs/conversion.md must hold the table verbatim.

``MLFLOW_DEPLOY_WRITE_DOCS=1 pytest tests/onnx/converters/test_model_zoo.py`` rewrites the table.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import PIP, tracking_store
from zoo import cases

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, VALUE

DOC = Path(__file__).resolve().parents[3] / "docs" / "conversion.md"
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
#: the gate's own tolerances: the matrix is what passes with them unchanged
ATOL, RTOL = 1e-4, 1e-3
METHOD_FOR_ROLE = {LABEL: "predict_label", PROBABILITIES: "predict_proba", VALUE: "predict_values"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """kind -> measurements, the whole zoo converted once per session."""
    root = tmp_path_factory.mktemp("zoo")
    results = {}
    (root / "store").mkdir()
    with tracking_store(root / "store"):
        for i, case in enumerate(cases()):
            try:
                results[case.kind] = _measure(case, root / f"twin{i}")
            except Exception as e:  # one case failing must not hide the others: reported per case
                results[case.kind] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return results


def _measure(case, path) -> dict:
    model, train = case.build()
    flavor = getattr(mlflow, case.flavor)
    kwargs = {"serialization_format": "cloudpickle"} if case.flavor == "sklearn" else {}
    if case.converter_options:
        kwargs["metadata"] = {"converter_options": case.converter_options}
    with mlflow.start_run():
        info = flavor.log_model(
            model,
            name="model",
            input_example=train.head(5),
            pip_requirements=PIP,
            **kwargs,
        )
    started = time.perf_counter()
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=case.fresh(1000, 1))
    seconds = time.perf_counter() - started
    result.save(str(path))
    twin = mlflow.pyfunc.load_model(str(path))
    source = mlflow.pyfunc.load_model(info.model_uri)
    native = case.fresh(1000, 2)
    assert not native.equals(train.head(len(native))), "the comparison rows must be fresh"
    # what a caller sends over HTTP or through the pyfunc: category columns arrive as strings
    categorical = native.select_dtypes("category").columns
    fresh = native.astype({c: object for c in categorical})
    outputs, errors, agreement = [], [], 1.0
    for role, method in result.io.extra["source_methods"].items():
        got = np.asarray(twin.predict(fresh, params={"predict_method": METHOD_FOR_ROLE[role]}))
        expected = np.asarray(getattr(model, method)(native[result.io.columns]))
        assert got.shape == expected.shape, (case.kind, role, got.shape, expected.shape)
        assert _dtype(got) == _dtype(expected), (case.kind, role, got.dtype, expected.dtype)
        if role == LABEL:
            agreement = min(agreement, float((got == expected).mean()))
        else:
            np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL, err_msg=case.kind)
            errors.append(float(np.abs(got.astype(float) - expected.astype(float)).max()))
        outputs.append(f"{role} ({method})")
    default, expected = (
        np.asarray(twin.predict(fresh)),
        _source_default(source, model, fresh, native),
    )
    message = f"{case.kind}: the twin's default predict differs from the source pyfunc"
    assert _dtype(default) == _dtype(expected), (case.kind, default.dtype, expected.dtype)
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(default, expected, atol=ATOL, rtol=RTOL, err_msg=message)
    else:
        np.testing.assert_array_equal(default, expected, err_msg=message)
    return {
        "outputs": outputs,
        "label_agreement": agreement,
        "max_error": max(errors, default=0.0),
        "nan": _nan_semantics(model, twin, native[result.io.columns], fresh[result.io.columns]),
        "parity_passed": result.parity.passed,
        "convert_s": seconds,
    }


def _dtype(arr: np.ndarray) -> tuple[str, str]:
    """A dtype as callers see it: name and char (int64 is 'l', onnxruntime's longlong 'q');
    strings as numpy gives them (object or fixed-width str) count as one kind."""
    if arr.dtype.kind in "OUS":
        return ("text", "")
    return (arr.dtype.name, arr.dtype.char)


def _source_default(source, model, fresh, native) -> np.ndarray:
    """The source pyfunc's answer; LightGBM/XGBoost pyfuncs cannot take string categories
    (MLflow cannot pass a category dtype), so their native predict on category columns."""
    try:
        return np.asarray(source.predict(fresh))
    except Exception:  # MlflowException / ValueError from the framework: see the docstring
        if not len(native.select_dtypes("category").columns):
            raise
        return np.asarray(model.predict(native))


def _nan_semantics(model, twin, frame, served) -> str:
    """What source and twin do with a NaN in the first numeric column, measured on 200 rows."""
    numeric = [c for c in frame.columns if frame[c].dtype.kind == "f"]
    if not numeric:
        return "no numeric inputs"
    probe, served = frame.head(200).copy(), served.head(200).copy()
    probe[numeric[0]] = served[numeric[0]] = np.nan
    try:
        expected = np.asarray(model.predict(probe))
    except ValueError:
        expected = None
    try:
        got = np.asarray(twin.predict(served))
    except Exception:  # the twin refusing is what we want when the source refuses
        got = None
    if expected is None:
        return "source refuses NaN; " + ("twin refuses" if got is None else "twin answers")
    if got is None:
        return "source accepts NaN; twin refuses"
    same = float(np.isclose(got.astype(float), expected.astype(float), atol=ATOL, rtol=RTOL).mean())
    return f"NaN routed like the source: {same:.1%} of rows equal"


def _bound(error: float) -> str:
    """A stable figure for the docs: the power of ten above the measured error."""
    if error == 0:
        return "0"
    return f"< 1e{math.ceil(math.log10(error)) if error < 1 else 0:+03d}"


def render(results: dict) -> str:
    lines = [
        BEGIN,
        "| model kind | converted | NaN semantics | outputs (source method) | labels equal | "
        "max abs error |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in results.items():
        if "error" in r:
            lines.append(
                f"| {kind} | no: {r['error'].splitlines()[0].replace('|', '/')} | - | - | - | - |"
            )
            continue
        labels = (
            f"{r['label_agreement']:.1%}" if any(o.startswith(LABEL) for o in r["outputs"]) else "-"
        )
        lines.append(
            f"| {kind} | yes | {r['nan']} | {', '.join(r['outputs'])} | {labels} | "
            f"{_bound(r['max_error'])} |"
        )
    lines.append(END)
    return "\n".join(lines)


@pytest.mark.parametrize("kind", [c.kind for c in cases()])
def test_zoo_case_converts_and_matches_the_source_on_fresh_rows(zoo, kind):
    r = zoo[kind]
    assert "error" not in r, r.get("error")
    assert r["parity_passed"]
    assert r["outputs"], f"{kind}: no output compared"
    assert r["label_agreement"] == 1.0, f"{kind}: labels differ on fresh rows"
    assert r["max_error"] <= ATOL, kind
    # refusal is right wherever the source refuses, a made-up value never is (and vice versa)
    assert r["nan"] not in ("source refuses NaN; twin answers", "source accepts NaN; twin refuses")
    if case_by_kind(kind).nan_exact:
        assert r["nan"] == "NaN routed like the source: 100.0% of rows equal", (kind, r["nan"])


def case_by_kind(kind: str):
    return next(c for c in cases() if c.kind == kind)


def test_docs_show_the_generated_support_matrix(zoo):
    table = render(zoo)
    text = DOC.read_text()
    if os.environ.get("MLFLOW_DEPLOY_WRITE_DOCS") == "1":
        start, stop = text.index(BEGIN), text.index(END) + len(END)
        DOC.write_text(text[:start] + table + text[stop:])
        text = DOC.read_text()
    assert table in text, (
        "docs/conversion.md must contain the support matrix generated by this test verbatim; "
        "rerun with MLFLOW_DEPLOY_WRITE_DOCS=1:\n" + table
    )
