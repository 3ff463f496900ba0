"""LightGBM / XGBoost trained on pandas ``category`` columns: the twin takes the category values
and treats a value the model never saw like the source (LightGBM: missing; XGBoost: refused).
Converted through ``mlflow_deploy_plugins.convert`` from models logged with their own flavor."""

from __future__ import annotations

import lightgbm
import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost
from helpers import PIP, tracking_store

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.session import make_session, run_by_role

LEVELS = ["north", "south", "east", "west"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("categorical-store")) as uri:
        yield uri


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 2)), columns=["a", "b"])
    df["region"] = pd.Categorical(rng.choice(LEVELS, n), categories=LEVELS)
    return df


def target(df: pd.DataFrame) -> np.ndarray:
    return (
        ((df["a"] + (df["region"] == "south") * 1.5 - (df["region"] == "east")) > 0.3)
        .astype(int)
        .to_numpy()
    )


def convert(flavor, model, train):
    with mlflow.start_run():
        info = flavor.log_model(model, name="model", pip_requirements=PIP)
    return mlflow_deploy_plugins.convert(info.model_uri, sample=frame(400, 1))


def run(result, df: pd.DataFrame) -> dict:
    session = make_session(result.onnx_model.SerializeToString())
    feed = result.io.encode_columns({c: df[c].astype(object).to_numpy() for c in result.io.columns})
    return run_by_role(session, result.io, feed)


def test_lightgbm_unseen_category_is_missing_like_the_source(store):
    train = frame(1000, 0)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(train, target(train))
    result = convert(mlflow.lightgbm, model, train)

    fresh = frame(300, 2)
    fresh["region"] = fresh["region"].cat.add_categories(["atlantis"])
    fresh.loc[fresh.index[::5], "region"] = "atlantis"
    got = run(result, fresh)

    assert result.io.extra["unseen_categories"] == "missing"
    assert result.io.extra["categories"] == {"region": LEVELS}
    np.testing.assert_allclose(
        np.asarray(got["probabilities"]), model.predict_proba(fresh), atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(got["label"]).reshape(-1), model.predict(fresh))


def test_xgboost_categorical_matches_and_records_that_the_source_refuses_unseen(store):
    train = frame(1000, 0)
    model = xgboost.XGBClassifier(n_estimators=20, enable_categorical=True).fit(
        train, target(train)
    )
    result = convert(mlflow.xgboost, model, train)
    fresh = frame(300, 2)

    got = run(result, fresh)
    np.testing.assert_allclose(
        np.asarray(got["probabilities"]), model.predict_proba(fresh), atol=1e-6
    )
    unseen = fresh.head(3).copy()
    unseen["region"] = pd.Categorical(["zzz"] * 3, categories=[*LEVELS, "zzz"])
    with pytest.raises(xgboost.core.XGBoostError, match="not in the training set"):
        model.predict(unseen)
    assert result.io.extra["unseen_categories"] == "refuse"
    assert result.io.extra["categories"] == {"region": LEVELS}
