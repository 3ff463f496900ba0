"""Infinite values like the source: the twin refuses them where the source does (a forest's
graph answered 1e308, inf in float32, with a prediction the source refuses to make), and
answers them where the source does (HistGradientBoosting)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import log_sklearn, tracking_store
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.iospec import IOSpec


def _data():
    x, y = make_classification(n_samples=200, n_features=4, random_state=0)
    return pd.DataFrame(x, columns=list("abcd")), y


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("infinite")
    frame, y = _data()
    out = {}
    with tracking_store(root):
        for name, model in {
            "forest": RandomForestClassifier(n_estimators=5, random_state=0),
            "hgb": HistGradientBoostingClassifier(max_iter=5, random_state=0),
        }.items():
            model.fit(frame, y)
            info = log_sklearn(model, frame.head(5))
            result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame)
            result.save(str(root / name))
            out[name] = (model, result, str(root / name))
    yield out


def _rows(value):
    frame, _ = _data()
    rows = frame.head(3).copy()
    rows.loc[rows.index[1], "c"] = value
    return rows


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e308])
def test_the_twin_refuses_what_the_source_refuses_naming_column_and_row(twins, value):
    model, result, path = twins["forest"]
    with pytest.raises(ValueError):  # the source: "Input X contains infinity ..."
        model.predict(_rows(value))
    assert result.io.accepts_infinite is False
    assert any("refuses infinite values" in n for n in result.notes)
    twin = mlflow.pyfunc.load_model(path)
    with pytest.raises(Exception) as caught:
        twin.predict(_rows(value))
    message = str(caught.value)
    assert "Column 'c'" in message and "row 1" in message and "infinite" in message


def test_the_twin_answers_what_the_source_answers(twins):
    model, result, path = twins["hgb"]
    rows = _rows(np.inf)
    expected = model.predict(rows)
    assert result.io.accepts_infinite is True
    got = mlflow.pyfunc.load_model(path).predict(rows)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_a_twin_built_before_the_record_refuses_infinite_values(twins):
    _, result, _ = twins["hgb"]
    old = result.io.to_dict()
    del old["accepts_infinite"]
    assert IOSpec.from_dict(old).accepts_infinite is False
