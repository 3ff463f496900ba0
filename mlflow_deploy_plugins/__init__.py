"""mlflow-deploy-plugins: verified ONNX conversion on promotion, deployment targets, drift.

The public API is imported lazily so ``import mlflow_deploy_plugins`` stays cheap (the serving
runtime imports subpackages of it without pulling in mlflow).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "convert": "mlflow_deploy_plugins.onnx.convert:convert",
    "promote": "mlflow_deploy_plugins.registry.promote:promote",
    "PromotionResult": "mlflow_deploy_plugins.registry.promote:PromotionResult",
    "ConversionResult": "mlflow_deploy_plugins.onnx.convert:ConversionResult",
    "build_bundle": "mlflow_deploy_plugins.bundle:build_bundle",
    "drift_report": "mlflow_deploy_plugins.monitoring.drift:drift_report",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mlflow_deploy_plugins' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
