"""Models for the batch tests: a registered churn classifier promoted to its ONNX twin
(``models:/churn-onnx@champion``) and one whose pyfunc returns probabilities (two values per
row), in one real SQLite registry per test module."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import log_sklearn, mixed_data, mixed_pipeline, tracking_store
from sklearn.linear_model import LogisticRegression

import mlflow_deploy_plugins


class Registered:
    """URIs of the module's models and the frame they were trained on."""

    def __init__(self, root, frame):
        self.root, self.frame = root, frame
        self.twin = "models:/churn-onnx@champion"
        self.source = "models:/churn/1"
        self.proba_twin = "models:/churn-proba-onnx@champion"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-models")
    with tracking_store(root):
        frame, target = mixed_data(400)
        model = mixed_pipeline(LogisticRegression(max_iter=500))
        model.fit(frame, target.astype(np.int64))
        log_sklearn(model, frame.head(5), registered_model_name="churn")
        mlflow_deploy_plugins.promote("churn", 1, alias="champion", sample=frame)
        log_sklearn(
            model,
            frame.head(5),
            registered_model_name="churn-proba",
            pyfunc_predict_fn="predict_proba",
        )
        mlflow_deploy_plugins.promote("churn-proba", 1, alias="champion", sample=frame)
        yield Registered(root, frame)
