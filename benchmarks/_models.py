"""Models the benchmarks share, logged and registered the way users do (mlflow.sklearn's default
skops format, with the trusted types skops asks for). Imported by the scripts in this folder."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

N_FEATURES = 20


def scaler_gradient_boosting(rows: int, seed: int = 0):
    """The issues' reference model: StandardScaler + GradientBoostingClassifier (100 trees) on
    20 numeric features. Returns ``(x, model)``."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        rng.normal(size=(rows, N_FEATURES)), columns=[f"x{i}" for i in range(N_FEATURES)]
    )
    y = (x.x0 * 2 - x.x1 + x.x2 * x.x3 + rng.normal(scale=0.3, size=rows) > 0).astype(int)
    model = Pipeline(
        [("scale", StandardScaler()), ("gb", GradientBoostingClassifier(n_estimators=100))]
    ).fit(x, y)
    return x, model


def log_registered(model, input_example: pd.DataFrame, name: str, **log_kwargs) -> None:
    """Log ``model`` with mlflow.sklearn in a new run and register it as ``name``."""
    import skops.io

    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=input_example,
            registered_model_name=name,
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
            **log_kwargs,
        )
