"""Tied votes get the source's label. A forest's probabilities are vote shares that often tie
exactly on fresh rows; sklearn answers the first class, the twin's float32 sums answered either,
depending on the batch (found on a model zoo: 37 of 5,000 fresh rows, none on the gate's)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from helpers import log_sklearn, tracking_store
from sklearn.ensemble import RandomForestClassifier
from sklearn.svm import SVC

import mlflow_deploy_plugins
from mlflow_deploy_plugins.onnx import ties


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, 3)), columns=list("abc"))


def _convert(tmp_path, model, frame):
    with tracking_store(tmp_path):
        info = log_sklearn(model, frame.head(5))
        return mlflow_deploy_plugins.convert(info.model_uri, sample=frame)


def _labels(result, frame: pd.DataFrame, one_by_one: bool = False) -> np.ndarray:
    session = ort.InferenceSession(result.onnx_model.SerializeToString())
    feed = result.io.encode_columns({c: frame[c].to_numpy() for c in result.io.columns})
    if not one_by_one:
        return session.run(["label"], feed)[0]
    return np.array(
        [
            session.run(["label"], {k: v[i : i + 1] for k, v in feed.items()})[0][0]
            for i in range(len(frame))
        ]
    )


@pytest.mark.parametrize("classes", [[3, 7, 11], ["low", "mid", "high"]])
def test_tied_votes_get_the_first_class_in_any_batch(tmp_path, classes):
    frame = _rows(1000, 0)
    noise = (np.random.default_rng(0).random(1000) * 3).astype(int)  # labels without signal
    model = RandomForestClassifier(n_estimators=20, random_state=0)
    model.fit(
        frame, np.asarray(classes, dtype=object if isinstance(classes[0], str) else None)[noise]
    )
    result = _convert(tmp_path, model, frame)
    assert any("first class among the top probabilities" in n for n in result.notes)
    fresh = _rows(5000, 1)
    votes = np.sort(model.predict_proba(fresh), axis=1)
    tied = votes[:, -1] == votes[:, -2]
    assert tied.sum() > 100, "no tied rows: the case is moot"
    expected = model.predict(fresh)
    np.testing.assert_array_equal(_labels(result, fresh), expected)
    few = fresh[tied].head(60)  # a request of one row sums in another order than a batch
    np.testing.assert_array_equal(_labels(result, few, one_by_one=True), model.predict(few))


def test_no_rebuild_where_the_source_label_is_not_its_argmax(tmp_path):
    # SVC's probabilities are Platt-scaled: its predict is not their argmax on every row
    frame = _rows(300, 2)
    target = (frame.a + 0.3 * np.random.default_rng(2).normal(size=300) > 0).astype(int)
    model = SVC(probability=True, random_state=0).fit(frame, target)
    assert (model.predict(frame) != model.predict_proba(frame).argmax(1)).any(), "moot"
    result = _convert(tmp_path, model, frame)
    assert not any("first class among the top probabilities" in n for n in result.notes)
    np.testing.assert_array_equal(_labels(result, frame), model.predict(frame))


def test_eps_is_below_one_vote_share():
    # distinct vote shares of an n-tree forest differ by 1/n: only exact ties fall within EPS
    assert ties.EPS < 1 / 10_000
