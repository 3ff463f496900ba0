"""The MLflow side of a drift report: one run per report, and the model-version tags.

Through ``MlflowClient`` only (no fluent ``mlflow.start_run``), so a report never nests into, or
ends, a run the caller has active. A run ends FINISHED only once everything is logged; any
failure ends it FAILED with the reason in ``mlflow_deploy.drift.error`` and its description.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry.gateway import RegistryGateway, experiment_id

_logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^\w\-. /]")
#: MLflow's limits per log_batch call.
_MAX_ENTITIES, _MAX_PARAMS = 1000, 100
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250


def metric_key(*parts: str) -> str:
    """A valid metric/param key: characters MLflow refuses become ``_``."""
    return _UNSAFE.sub("_", ".".join(parts))[:_MAX_KEY]


def start_run(client, experiment: str, run_name: str, tags: Mapping[str, str]) -> tuple[str, str]:
    """``(run_id, experiment_id)`` of a new RUNNING run."""
    exp_id = experiment_id(client, experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    return run.info.run_id, exp_id


def log_everything(
    client,
    run_id: str,
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts_dir: str,
) -> None:
    """Params, metrics, tags in as few batches as MLflow allows, then the artifacts."""
    now = int(time.time() * 1000)
    metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    param_list = [Param(k[:_MAX_KEY], _clip(v, _MAX_PARAM_VALUE)) for k, v in params.items()]
    tag_list = [RunTag(k, tag_keys.clip(v)) for k, v in tags.items()]
    while metric_list or param_list or tag_list:
        params_now, tags_now = param_list[:_MAX_PARAMS], tag_list[:_MAX_PARAMS]
        metrics_now = metric_list[: _MAX_ENTITIES - len(params_now) - len(tags_now)]
        client.log_batch(run_id, metrics=metrics_now, params=params_now, tags=tags_now)
        metric_list = metric_list[len(metrics_now) :]
        param_list, tag_list = param_list[len(params_now) :], tag_list[len(tags_now) :]
    client.log_artifacts(run_id, artifacts_dir)


def fail_run(client, run_id: str, reason: str) -> None:
    """End ``run_id`` FAILED with ``reason`` (best effort: the original error is what matters)."""
    try:
        client.set_tag(run_id, tag_keys.DRIFT_STATUS, tag_keys.DRIFT_FAILED)
        client.set_tag(run_id, tag_keys.DRIFT_ERROR, tag_keys.clip(reason))
        client.set_tag(
            run_id, "mlflow.note.content", tag_keys.clip(f"Drift report failed: {reason}")
        )
    except MlflowException as e:
        _logger.warning("Could not tag failed run %s: %s", run_id, e)
    try:
        client.set_terminated(run_id, "FAILED")
    except MlflowException as e:
        _logger.error("Could not end run %s as FAILED: %s", run_id, e)


def tag_versions(client, versions: Iterable[tuple[str, str]], tags: Mapping[str, str]) -> None:
    """Write ``tags`` (clipped) on every ``(name, version)``."""
    registry = RegistryGateway(client)
    for name, version in versions:
        registry.set_version_tags(name, version, tags)


def tag_versions_failed(client, versions, run_id: str | None, reason: str, checked_at: str) -> None:
    """The latest check failed: say so, and drop the previous check's figures (best effort)."""
    tags = {
        tag_keys.DRIFT_STATUS: tag_keys.DRIFT_FAILED,
        tag_keys.DRIFT_ERROR: reason,
        tag_keys.DRIFT_CHECKED_AT: checked_at,
    }
    if run_id:
        tags[tag_keys.DRIFT_RUN_ID] = run_id
    registry = RegistryGateway(client)
    for name, version in versions:
        if registry.set_version_tags(name, version, tags, best_effort=True):
            for stale in (tag_keys.DRIFT_SHARE, tag_keys.DRIFT_COLUMNS):
                registry.delete_version_tag(name, version, stale)


def clear_error(client, versions) -> None:
    """Remove the error of an earlier failed check from every ``(name, version)``."""
    registry = RegistryGateway(client)
    for name, version in versions:
        registry.delete_version_tag(name, version, tag_keys.DRIFT_ERROR)


def _clip(value: object, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
