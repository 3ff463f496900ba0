"""The model zoo of the support matrix: each case fits a real model, and says how to make fresh
rows (a seed the model never saw, NaN where the kind takes it, unseen categories).

``tests/onnx/converters/test_model_zoo.py`` logs every case with its MLflow flavor, converts it
through ``mlflow_deploy_plugins.convert`` and compares the ONNX pyfunc with the source on fresh
rows; the table in docs/conversion.md is generated from those measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NUMERIC = ["a", "b", "c", "d"]
WORDS = ["cat", "dog", "mat", "sat", "red", "happy", "the", "a", "Great", "IS"]


@dataclass
class Case:
    kind: str  # the row label of the support matrix
    build: Callable[[], tuple[object, pd.DataFrame]]  # fitted model, its training frame
    fresh: Callable[[int, int], pd.DataFrame]  # (rows, seed) -> rows the model never saw
    #: skl2onnx options passed through ConversionOptions.extra["converter_options"]
    converter_options: dict = field(default_factory=dict)
    #: the twin must route NaN exactly like the source (our own converters)
    nan_exact: bool = False
    #: the MLflow flavor the model is logged with
    flavor: str = "sklearn"


def numeric_frame(n: int, seed: int, nan: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    if nan:
        for c in ("a", "b"):
            df.loc[rng.random(n) < nan, c] = np.nan
    return df


def mixed_frame(n: int, seed: int, nan: float = 0.0, unseen: bool = False) -> pd.DataFrame:
    """Numeric columns plus a pandas ``category`` column and a small-integer code column."""
    rng = np.random.default_rng(seed)
    df = numeric_frame(n, seed, nan)
    levels = ["north", "south", "east", "west"]
    df["region"] = pd.Categorical(rng.choice(levels, n), categories=levels)
    df["code"] = rng.integers(0, 5, n).astype(float)
    if unseen:
        df["region"] = df["region"].cat.add_categories(["atlantis"])
        df.loc[df.index[::7], "region"] = "atlantis"
        df.loc[df.index[::11], "code"] = 9.0
    if nan:
        df.loc[rng.random(n) < nan, "code"] = np.nan
    return df


def text_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, rng.integers(2, 7))) for _ in range(n)]
    return pd.DataFrame({"text": docs})


def _labels3(df: pd.DataFrame) -> np.ndarray:
    a, b = df["a"].fillna(0).to_numpy(), df["b"].fillna(0).to_numpy()
    return (a > 0).astype(int) + (b > 0.5).astype(int)


def _numeric(model, *, nan: float = 0.0, target=_labels3):
    def build():
        df = numeric_frame(600, 0, nan)
        return model.fit(df, target(df)), df

    return build


def _mixed(model, target):
    def build():
        df = mixed_frame(1500, 0, nan=0.1)
        return model.fit(df, target(df)), df

    return build


def _unsupervised(model):
    def build():
        df = numeric_frame(600, 0)
        return model.fit(df), df

    return build


def _text(vectorizer):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    def build():
        df = text_frame(400, 0)
        y = df["text"].str.contains("cat|dog").astype(int).to_numpy()
        model = Pipeline(
            [
                ("text", ColumnTransformer([("vec", vectorizer, "text")])),
                ("clf", LogisticRegression()),
            ]
        )
        return model.fit(df, y), df

    return build


def _booster_frame(n: int, seed: int, unseen: bool) -> pd.DataFrame:
    return mixed_frame(n, seed, nan=0.1, unseen=unseen).drop(columns=["code"])


def _booster(model):
    def build():
        df = _booster_frame(1500, 0, unseen=False)
        y = (df["a"].fillna(0) + (df["region"] == "south") * 1.5 - (df["region"] == "east")) > 0.5
        return model.fit(df, y.astype(int) + (df["b"].fillna(0) > 0.5)), df

    return build


def cases() -> list[Case]:
    import lightgbm
    import xgboost
    from sklearn.cluster import KMeans
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        IsolationForest,
        VotingClassifier,
    )
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.mixture import GaussianMixture
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import KBinsDiscretizer
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    def binary(df):
        return (_labels3(df) > 0).astype(int)

    def region_value(df):
        return df["a"].fillna(0) * 3 + (df["region"] == "south") * 2 + df["code"].fillna(2)

    def numeric(n, seed):
        return numeric_frame(n, seed)

    def with_nan(n, seed):
        return numeric_frame(n, seed, nan=0.1)

    def mixed(n, seed):
        return mixed_frame(n, seed, nan=0.1, unseen=True)

    voters = [
        ("lr", LogisticRegression()),
        ("tree", DecisionTreeClassifier(max_depth=4, random_state=0)),
    ]

    def booster_unseen(n, seed):
        return _booster_frame(n, seed, unseen=True)

    def booster_seen(n, seed):
        return _booster_frame(n, seed, unseen=False)

    return [
        Case(
            "LightGBM LGBMClassifier (pandas category, NaN, unseen categories)",
            _booster(lightgbm.LGBMClassifier(n_estimators=30, verbose=-1)),
            booster_unseen,
            nan_exact=True,
            flavor="lightgbm",
        ),
        Case(
            "XGBoost XGBClassifier (enable_categorical, NaN)",
            _booster(xgboost.XGBClassifier(n_estimators=30, enable_categorical=True)),
            booster_seen,
            nan_exact=True,
            flavor="xgboost",
        ),
        Case("LinearSVC (binary)", _numeric(LinearSVC(), target=binary), numeric),
        Case("LinearSVC (3 classes)", _numeric(LinearSVC()), numeric),
        Case("SVC (binary, no probability)", _numeric(SVC(), target=binary), numeric),
        Case("SVC (3 classes, no probability)", _numeric(SVC()), numeric),
        Case(
            "IsolationForest",
            _unsupervised(IsolationForest(random_state=0)),
            numeric,
            nan_exact=True,  # sklearn's missing_go_to_left copied into skl2onnx's per-tree nodes
        ),
        Case("KMeans", _unsupervised(KMeans(3, random_state=0, n_init=2)), numeric),
        Case("GaussianMixture", _unsupervised(GaussianMixture(3, random_state=0)), numeric),
        Case("VotingClassifier (hard, defaults)", _numeric(VotingClassifier(voters)), numeric),
        Case(
            "VotingClassifier (soft, defaults)",
            _numeric(VotingClassifier(voters, voting="soft")),
            numeric,
        ),
        Case(
            "TfidfVectorizer + LogisticRegression",
            _text(TfidfVectorizer()),
            text_frame,
            converter_options={"TfidfVectorizer": {"locale": "C.UTF-8"}},
        ),
        Case("CountVectorizer + LogisticRegression", _text(CountVectorizer()), text_frame),
        Case(
            "KBinsDiscretizer(onehot) + LogisticRegression",
            _numeric(make_pipeline(KBinsDiscretizer(n_bins=4), LogisticRegression())),
            numeric,
        ),
        Case(
            "HistGradientBoostingClassifier (numeric, NaN)",
            _numeric(HistGradientBoostingClassifier(max_iter=30), nan=0.1),
            with_nan,
            nan_exact=True,
        ),
        Case(
            "HistGradientBoostingClassifier (categorical, NaN)",
            _mixed(
                HistGradientBoostingClassifier(max_iter=30, categorical_features="from_dtype"),
                binary,
            ),
            mixed,
            nan_exact=True,
        ),
        Case(
            "HistGradientBoostingClassifier (3 classes, categorical)",
            _mixed(
                HistGradientBoostingClassifier(max_iter=20, categorical_features="from_dtype"),
                _labels3,
            ),
            mixed,
            nan_exact=True,
        ),
        Case(
            "HistGradientBoostingRegressor (categorical, NaN)",
            _mixed(
                HistGradientBoostingRegressor(max_iter=30, categorical_features="from_dtype"),
                region_value,
            ),
            mixed,
            nan_exact=True,
        ),
        Case(
            "HistGradientBoostingRegressor (poisson, numeric)",
            _numeric(
                HistGradientBoostingRegressor(loss="poisson", max_iter=30),
                nan=0.1,
                target=lambda df: np.exp(df["a"].fillna(0).clip(-2, 2)),
            ),
            with_nan,
            nan_exact=True,
        ),
    ]
