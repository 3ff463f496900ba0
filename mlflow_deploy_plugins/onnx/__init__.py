"""The ``mlflow_deploy_plugins`` ONNX flavor and the conversion pipeline behind it."""

from __future__ import annotations

from mlflow_deploy_plugins.onnx.flavor import (
    FLAVOR_NAME,
    OnnxModel,
    load_model,
    log_model,
    save_model,
)

__all__ = ["FLAVOR_NAME", "OnnxModel", "load_model", "log_model", "save_model"]
