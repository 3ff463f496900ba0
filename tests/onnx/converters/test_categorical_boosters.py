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
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.onnx import flavor as onnx_flavor

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


def test_xgboost_twin_refuses_an_unseen_category_like_the_source(store, tmp_path):
    """The pyfunc refuses a category XGBoost never saw, naming the column and the value (the
    graph alone would read it as missing and answer); known categories are answered as before."""
    train = frame(1000, 0)
    model = xgboost.XGBClassifier(n_estimators=20, enable_categorical=True).fit(
        train, target(train)
    )
    result = convert(mlflow.xgboost, model, train)
    result.save(str(tmp_path / "twin"))
    twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))
    fresh = frame(50, 3)
    sent = fresh.astype({"region": object})
    np.testing.assert_array_equal(np.asarray(twin.predict(sent)), model.predict(fresh))

    for unseen in ("zzz", "aaa"):  # "aaa" sorts before every training category
        bad = sent.copy()
        bad.loc[bad.index[7], "region"] = unseen
        if unseen == "zzz":  # xgboost 3.2 misses "aaa" (see categorical.py): no check
            with pytest.raises(xgboost.core.XGBoostError, match="not in the training set"):
                model.predict(bad.astype({"region": "category"}))
        with pytest.raises(
            InvalidInputError, match=rf"Column 'region' holds the category '{unseen}'"
        ):
            twin.predict(bad)
    # the ONNX inputs handed over as they are (the flavor's own model; MLflow's schema check
    # stops 2-D arrays before the pyfunc)
    onnx_model = onnx_flavor.load_model(str(tmp_path / "twin"))
    raw = {
        "a": sent[["a"]].to_numpy(dtype=np.float32),
        "b": sent[["b"]].to_numpy(dtype=np.float32),
        "region": sent[["region"]].to_numpy(dtype=object),
    }
    np.testing.assert_array_equal(onnx_model.predict(raw), model.predict(fresh))
    raw["region"][3, 0] = "zzz"
    with pytest.raises(InvalidInputError, match="Column 'region' holds the category 'zzz'"):
        onnx_model.predict(raw)


def test_lightgbm_twin_still_reads_an_unseen_category_as_missing(store, tmp_path):
    train = frame(1000, 0)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(train, target(train))
    result = convert(mlflow.lightgbm, model, train)
    result.save(str(tmp_path / "twin"))
    twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))
    fresh = frame(60, 4)
    sent = fresh.astype({"region": object})
    sent.loc[sent.index[::4], "region"] = "atlantis"
    native = sent.astype({"region": pd.CategoricalDtype([*LEVELS, "atlantis"])})
    assert not result.io.refused_categories
    np.testing.assert_array_equal(np.asarray(twin.predict(sent)), model.predict(native))
