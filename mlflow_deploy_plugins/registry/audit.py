"""Audit trail of the promotion automation: one MLflow run per handled event.

Each run records the event, the source and ONNX versions, the parity figures, the deployment
target and the result, with timings; its start and end times say when. So "which ONNX version
served ``churn@champion`` on March 3rd" is answered from MLflow alone (:func:`promotion_history`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry.gateway import experiment_id, paged

_logger = logging.getLogger(__name__)

#: Results that leave a run (no-ops and ignored events only leave a log line).
RESULTS = ("converted", "reused", "removed", "failed")


@dataclass
class AuditRecord:
    """What one pipeline attempt did; becomes the tags and metrics of one audit run."""

    event: str  # model_version_alias.created | model_version_alias.deleted | reconcile | poll
    source_model: str
    kind: str  # alias | stage
    label: str  # the alias or the stage
    result: str  # one of RESULTS
    source_version: str | None = None
    onnx_model: str | None = None
    onnx_version: str | None = None
    previous_onnx_version: str | None = None
    delivery_ids: tuple[str, ...] = ()
    error: str | None = None
    target: str | None = None
    deployment: str | None = None
    deployed_model_uri: str | None = None
    parity: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: queue, promote, deploy
    started_at: float = field(default_factory=time.time)  # epoch seconds
    ended_at: float | None = None

    def run_name(self) -> str:
        at = f"@{self.label}" if self.kind == "alias" else f" [{self.label}]"
        version = f" v{self.source_version}" if self.source_version else ""
        return f"{self.result} {self.source_model}{at}{version}"

    def tags(self) -> dict[str, str]:
        tags = {
            tag_keys.AUDIT_EVENT: self.event,
            tag_keys.AUDIT_RESULT: self.result,
            tag_keys.SOURCE_MODEL: self.source_model,
            tag_keys.AUDIT_ALIAS if self.kind == "alias" else tag_keys.AUDIT_STAGE: self.label,
            tag_keys.SOURCE_VERSION: self.source_version,
            tag_keys.ONNX_MODEL: self.onnx_model,
            tag_keys.ONNX_VERSION: self.onnx_version,
            tag_keys.AUDIT_PREVIOUS_ONNX_VERSION: self.previous_onnx_version,
            tag_keys.AUDIT_DELIVERY_IDS: ",".join(self.delivery_ids) or None,
            tag_keys.ERROR: tag_keys.clip(self.error) if self.error else None,
            tag_keys.AUDIT_TARGET: self.target,
            tag_keys.AUDIT_DEPLOYMENT: self.deployment,
            tag_keys.AUDIT_DEPLOYED_URI: self.deployed_model_uri,
        }
        return {k: str(v) for k, v in tags.items() if v is not None}

    def metrics(self) -> dict[str, float]:
        out = {f"timing.{k}_s": float(v) for k, v in self.timings.items()}
        for key, value in self.parity.items():
            if isinstance(value, bool | int | float):
                out[f"parity.{key}"] = float(value)
        return out


class AuditLog:
    """Writes :class:`AuditRecord` runs into one experiment. Never raises: an audit failure is
    logged, it does not undo or fail the promotion it describes."""

    def __init__(self, experiment_name: str, client: MlflowClient | None = None):
        self.experiment_name = experiment_name
        self._client = client or MlflowClient()
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    def record(self, record: AuditRecord) -> str | None:
        """Log ``record`` as a finished (or failed) run; return its run id (None on error)."""
        try:
            experiment_id = self._experiment()
            run = self._client.create_run(
                experiment_id,
                start_time=int(record.started_at * 1000),
                tags=record.tags(),
                run_name=record.run_name(),
            )
            run_id = run.info.run_id
            ended = record.ended_at or time.time()
            metrics = [
                Metric(k, v, int(ended * 1000), 0) for k, v in sorted(record.metrics().items())
            ]
            if metrics:
                self._client.log_batch(run_id, metrics=metrics)
            status = RunStatus.FAILED if record.result == "failed" else RunStatus.FINISHED
            self._client.set_terminated(
                run_id, RunStatus.to_string(status), end_time=int(ended * 1000)
            )
            return run_id
        except Exception as e:  # the audit must never take the pipeline down
            _logger.warning("Could not record the audit run for %s: %s", record.run_name(), e)
            return None

    def _experiment(self) -> str:
        with self._lock:
            if self._experiment_id is None:
                self._experiment_id = experiment_id(
                    self._client, self.experiment_name, {tag_keys.KIND: "automation-audit"}
                )
            return self._experiment_id


def promotion_history(
    source_model: str,
    *,
    alias: str | None = None,
    stage: str | None = None,
    experiment_name: str = "mlflow-deploy-automation",
    client: MlflowClient | None = None,
) -> list[dict]:
    """Every recorded attempt for ``source_model`` (optionally one alias or stage), oldest first.

    Returns:
        One dict per audit run: ``run_id``, ``start``/``end`` (epoch ms), ``status`` and the
        ``mlflow_deploy.*`` tags without their prefix (``result``, ``source_version``,
        ``onnx_version``, ``deployment``, ...).
    """
    client = client or MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    filters = [f"tags.`{tag_keys.SOURCE_MODEL}` = '{_quote(source_model)}'"]
    if alias is not None:
        filters.append(f"tags.`{tag_keys.AUDIT_ALIAS}` = '{_quote(alias)}'")
    if stage is not None:
        filters.append(f"tags.`{tag_keys.AUDIT_STAGE}` = '{_quote(stage)}'")
    runs = paged(
        client.search_runs,
        experiment_ids=[experiment.experiment_id],
        filter_string=" and ".join(filters),
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return [_history_row(run) for run in runs]


def _history_row(run) -> dict:
    row = {
        "run_id": run.info.run_id,
        "start": run.info.start_time,
        "end": run.info.end_time,
        "status": run.info.status,
    }
    prefix = tag_keys.PREFIX
    row.update({k[len(prefix) :]: v for k, v in run.data.tags.items() if k.startswith(prefix)})
    return row


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
