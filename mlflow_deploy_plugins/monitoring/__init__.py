"""Drift monitoring: Evidently reports from production data, logged back to MLflow.

``drift_report(model_uri, current)`` compares production data (a payload-log directory of the
serving runtime, a Parquet/CSV/JSONL file or a DataFrame) with the reference sample stored with
the model's ONNX twin, logs one MLflow run and tags the model versions. Imported lazily: the
CLI and ``import mlflow_deploy_plugins`` do not pay for Evidently until a report runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "drift_report": "mlflow_deploy_plugins.monitoring.drift:drift_report",
    "DriftResult": "mlflow_deploy_plugins.monitoring.result:DriftResult",
    "DriftSettings": "mlflow_deploy_plugins.monitoring.settings:DriftSettings",
    "ColumnDrift": "mlflow_deploy_plugins.monitoring.report:ColumnDrift",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mlflow_deploy_plugins.monitoring' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
