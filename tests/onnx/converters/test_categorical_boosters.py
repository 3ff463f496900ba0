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


def _with_missing_regions(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with None and NaN in some of its ``region`` cells (an object column, as callers
    send it to the twin)."""
    sent = df.astype({"region": object})
    sent.loc[sent.index[::3], "region"] = None
    sent.loc[sent.index[1::7], "region"] = np.nan
    return sent


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_missing_category_is_answered_like_the_source_pyfunc(store, tmp_path, library):
    """A missing value in a category column: the source pyfunc (logged with its own flavor, fed
    a ``category`` column) answers, reading it as missing; the twin answers the same. The probe
    used to hand XGBoost a category column without categories (an xgboost error) and concluded
    that the source refuses missing values there."""
    train = frame(1000, 0)
    if library == "xgboost":
        model = xgboost.XGBClassifier(n_estimators=20, enable_categorical=True)
        flavor = mlflow.xgboost
    else:
        model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1)
        flavor = mlflow.lightgbm
    model.fit(train, target(train))
    with mlflow.start_run():
        info = flavor.log_model(model, name="model", pip_requirements=PIP)
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame(400, 1))
    assert "region" in result.io.accepts_missing
    assert result.parity.missing_value_rows > 0
    result.save(str(tmp_path / "twin"))
    twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))
    source = mlflow.pyfunc.load_model(info.model_uri)

    sent = _with_missing_regions(frame(60, 5))
    native = sent.astype({"region": pd.CategoricalDtype(LEVELS)})
    assert native["region"].isna().sum() == sent["region"].isna().sum() > 20
    np.testing.assert_array_equal(np.asarray(twin.predict(sent)), source.predict(native))
    np.testing.assert_allclose(
        np.asarray(twin.predict(sent, params={"predict_method": "predict_proba"})),
        model.predict_proba(native),
        atol=1e-6,
    )


def test_a_category_spelled_like_a_missing_value_refuses_missing_values(store, tmp_path):
    """A missing value reaches the graph's string tensor as the text 'None': with a training
    category 'None' the twin could not tell them apart, so it refuses missing values in that
    column (the source answers them: refusing is allowed, a made-up category is not)."""
    levels = ["None", "east", "west"]
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(size=1000)})
    train["region"] = pd.Categorical(rng.choice(levels, 1000), categories=levels)
    y = ((train["a"] + (train["region"] == "None") * 2.0) > 0.8).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(train, y)
    with mlflow.start_run():
        info = flavor_log(model)
    result = mlflow_deploy_plugins.convert(info.model_uri, sample=train.head(400))
    assert result.io.accepts_missing == ("a",)
    assert any("spelled like a missing value" in note for note in result.notes)
    result.save(str(tmp_path / "twin"))
    twin = mlflow.pyfunc.load_model(str(tmp_path / "twin"))

    sent = train.head(20).astype({"region": object})
    np.testing.assert_array_equal(np.asarray(twin.predict(sent)), model.predict(train.head(20)))
    sent.loc[sent.index[4], "region"] = None
    with pytest.raises(InvalidInputError, match="Column 'region' contains missing values"):
        twin.predict(sent)


def flavor_log(model):
    return mlflow.lightgbm.log_model(model, name="model", pip_requirements=PIP)
