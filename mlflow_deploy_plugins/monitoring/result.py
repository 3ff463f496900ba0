"""What one drift report found and where it was logged."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.monitoring.report import ColumnDrift
from mlflow_deploy_plugins.monitoring.settings import DriftSettings


@dataclass
class DriftResult:
    """What one report found and where it was logged."""

    status: str  # "drift" | "no_drift"
    columns: list[ColumnDrift]
    drift_share: float  # setting: the share of drifted columns that means "drift"
    run_id: str
    experiment_id: str
    experiment_name: str
    model_uri: str
    model_name: str | None
    model_version: str | None
    tagged_versions: list[tuple[str, str]]
    reference_rows: int
    current_rows: int
    current_rows_seen: int
    since: datetime | None
    until: datetime | None
    settings: DriftSettings
    missing_columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    snapshot: Any = field(default=None, repr=False)  # Evidently's Snapshot

    @property
    def drift_detected(self) -> bool:
        return self.status == tag_keys.DRIFT_DETECTED

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def share(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    def summary(self) -> str:
        drifted = ", ".join(self.drifted_columns) or "none"
        return (
            f"{self.model_name or self.model_uri}"
            f"{' v' + self.model_version if self.model_version else ''}: {self.status} "
            f"({len(self.drifted_columns)}/{len(self.columns)} columns drifted, share "
            f"{self.share:.3f}, drift at >= {self.drift_share}); drifted: {drifted}; "
            f"{self.current_rows} current rows (of {self.current_rows_seen}) vs "
            f"{self.reference_rows} reference rows; run {self.run_id}"
        )

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "drift_detected": self.drift_detected,
            "share": self.share,
            "count": len(self.drifted_columns),
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "columns": [c.to_dict() for c in self.columns],
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "experiment_name": self.experiment_name,
            "model_uri": self.model_uri,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "tagged_versions": [list(v) for v in self.tagged_versions],
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "current_rows_seen": self.current_rows_seen,
            "since": iso(self.since),
            "until": iso(self.until),
            "missing_columns": self.missing_columns,
            "extra_columns": self.extra_columns,
            "settings": self.settings.params(),
            "timings": self.timings,
        }


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
