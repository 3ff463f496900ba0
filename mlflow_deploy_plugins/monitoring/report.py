"""The Evidently 0.7 part: one ``DataDriftPreset`` report with tests, read back from its tests.

Drift is decided from the tests' status (``ValueDrift`` per column, ``DriftedColumnsCount`` for
the dataset), never from raw scores whose direction depends on the method (a distance drifts
above its threshold, a p-value below).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from mlflow_deploy_plugins.errors import DeployPluginError
from mlflow_deploy_plugins.monitoring.settings import CATEGORICAL, NUMERICAL, DriftSettings

_logger = logging.getLogger(__name__)

#: Evidently metric types whose tests decide drift.
VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
DRIFTED_COLUMNS = "evidently:metric_v2:DriftedColumnsCount"


@dataclass(frozen=True)
class ColumnDrift:
    """One compared column."""

    column: str
    kind: str  # num | cat
    method: str
    threshold: float
    score: float
    drifted: bool
    role: str = "input"  # input | prediction

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DriftOutcome:
    """What the report says; ``snapshot`` is Evidently's (save_html / dumps / dict)."""

    snapshot: Any
    columns: list[ColumnDrift]
    drift_detected: bool  # the dataset-level test failed: share >= drift_share
    evidently_count: float | None = None  # DriftedColumnsCount's own figures, for the record
    evidently_share: float | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def count(self) -> int:
        return len(self.drifted_columns)

    @property
    def share(self) -> float:
        return self.count / len(self.columns) if self.columns else 0.0


def build_report(columns: list[str], settings: DriftSettings, kinds: dict[str, str]):
    """``Report([DataDriftPreset(...)], include_tests=True)`` with every method pinned."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    per_column = {c: settings.method_for(c, kinds[c]) for c in columns}
    preset = DataDriftPreset(
        columns=list(columns),
        num_method=settings.num_method,
        cat_method=settings.cat_method,
        per_column_method=per_column,
        threshold=settings.threshold,
        drift_share=settings.drift_share,
    )
    return Report([preset], include_tests=True)


def datasets(reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str]):
    """Both frames as Evidently Datasets with the column types we decided (no re-inference)."""
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(
        numerical_columns=[c for c in current.columns if kinds[c] == NUMERICAL],
        categorical_columns=[c for c in current.columns if kinds[c] == CATEGORICAL],
    )
    return (
        Dataset.from_pandas(reference, data_definition=definition),
        Dataset.from_pandas(current, data_definition=definition),
    )


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, str],
    settings: DriftSettings,
    predictions: set[str] | frozenset[str] = frozenset(),
) -> DriftOutcome:
    """Run the report on two frames holding the same columns; read drift from its tests."""
    columns = list(current.columns)
    report = build_report(columns, settings, kinds)
    ref_ds, cur_ds = datasets(reference, current, kinds)
    try:
        snapshot = report.run(current_data=cur_ds, reference_data=ref_ds)
    except Exception as e:  # Evidently raises ValueError, TypeError, KeyError, ...
        raise DeployPluginError(f"Evidently could not compute the drift report: {e}") from e
    return read_outcome(snapshot, kinds, predictions)


def read_outcome(snapshot, kinds: dict[str, str], predictions=frozenset()) -> DriftOutcome:
    """Per-column drift from the ``ValueDrift`` tests, dataset drift from ``DriftedColumnsCount``."""
    results = {str(k): v for k, v in snapshot.metric_results.items()}
    columns: list[ColumnDrift] = []
    dataset_status = None
    evidently_count = evidently_share = None
    for test in snapshot.tests_results:
        config = test.metric_config
        params = config.params
        status = str(getattr(test.status, "value", test.status))
        result = results.get(str(config.metric_id))
        if params.get("type") == VALUE_DRIFT:
            column = params["column"]
            if status not in ("SUCCESS", "FAIL"):
                raise DeployPluginError(
                    f"Evidently's drift test for column {column!r} ended {status}: "
                    f"{test.description}"
                )
            columns.append(
                ColumnDrift(
                    column=column,
                    kind=kinds.get(column, ""),
                    method=str(params.get("method")),
                    threshold=_float(params.get("threshold")),
                    score=_float(getattr(result, "value", None)),
                    drifted=status == "FAIL",
                    role="prediction" if column in predictions else "input",
                )
            )
        elif params.get("type") == DRIFTED_COLUMNS:
            dataset_status = status
            if result is not None:
                evidently_count = _float(result.count.value)
                evidently_share = _float(result.share.value)
    if dataset_status not in ("SUCCESS", "FAIL"):
        raise DeployPluginError(
            f"Evidently's dataset drift test is missing or ended {dataset_status}: cannot decide"
        )
    outcome = DriftOutcome(
        snapshot, columns, dataset_status == "FAIL", evidently_count, evidently_share
    )
    if evidently_count is not None and evidently_count != outcome.count:
        _logger.warning(
            "Evidently counts %s drifted columns, its per-column tests %d",
            evidently_count,
            outcome.count,
        )
    return outcome


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
