"""Issue 11, property: on random fresh rows with missing values and unseen categories, the ONNX
pyfunc equals the source pyfunc, or both refuse. Seeded random configurations over pipelines with
and without imputers, int/str/bool labels, trees trained with and without NaN."""

from __future__ import annotations

import itertools

import mlflow
import numpy as np
import pytest
from helpers import log_sklearn, mixed_data, mixed_pipeline, tracking_store
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

import mlflow_deploy_plugins

ESTIMATORS = {
    "logistic": lambda: LogisticRegression(max_iter=500),
    "forest": lambda: RandomForestClassifier(n_estimators=12, random_state=0),
    "tree": lambda: DecisionTreeClassifier(max_depth=6, random_state=0),
}
LABELS = {
    "int": lambda t: t.astype(np.int64),
    "str": lambda t: np.where(t, "churn", "stay").astype(object),
    "bool": lambda t: t.astype(bool),
}
_ALL = [
    (est, imputer, labels, nan_train)
    for est, imputer, labels, nan_train in itertools.product(
        ESTIMATORS, (False, True), LABELS, (False, True)
    )
    if not (nan_train and (est == "logistic" and not imputer))  # the source cannot train on it
]
CONFIGS = [_ALL[i] for i in np.random.default_rng(11).choice(len(_ALL), 8, replace=False)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("property-store")) as uri:
        yield uri


def _fresh(seed: int, missing: float, unseen: float, n: int = 400):
    frame, _ = mixed_data(n, seed=seed)
    rng = np.random.default_rng(seed)
    for column in ("age", "income", "tenure"):
        frame.loc[rng.random(len(frame)) < missing, column] = np.nan
    frame.loc[rng.random(len(frame)) < unseen, "city"] = "marseille"  # never seen in training
    return frame


def _answer(predict, frame):
    try:
        return np.asarray(predict(frame))
    except Exception as e:  # a refusal: the exception type differs (sklearn vs ours)
        return e


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_twin_equals_source_or_both_refuse(store, tmp_path, config):
    est, imputer, labels, nan_train = config
    frame, target = mixed_data(500, seed=1)
    if nan_train:
        frame = _fresh(1, missing=0.1, unseen=0.0, n=500)
    model = mixed_pipeline(ESTIMATORS[est](), imputer=imputer).fit(frame, LABELS[labels](target))
    info = log_sklearn(model, frame.head(5))
    mlflow_deploy_plugins.convert(info.model_uri, sample=frame).save(str(tmp_path / "twin"))
    source = mlflow.pyfunc.load_model(info.model_uri)
    twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))
    for seed in range(3):
        fresh = _fresh(100 + seed, missing=0.1, unseen=0.1)
        for rows in (fresh, fresh.dropna()):
            expected, got = _answer(source.predict, rows), _answer(twin.predict, rows)
            if isinstance(expected, Exception):
                assert isinstance(got, Exception), (
                    f"the source refuses ({expected}), the twin answers"
                )
                assert "missing values" in str(got)
                continue
            assert not isinstance(got, Exception), f"the source answers, the twin refuses: {got}"
            assert got.dtype == expected.dtype
            assert (got == expected).all(), f"{(got != expected).sum()} of {len(rows)} rows differ"
