"""``drift_report``: production data vs the model's reference sample, logged back to MLflow.

Order (binding): resolve the model (errors here log nothing), start ONE run, read and check both
samples, run Evidently, write the artifacts, log params/metrics/tags/artifacts, tag the model
versions, end the run FINISHED. Any failure after the run started ends it FAILED with the reason
and marks the versions' latest check ``failed``: never a run that looks complete but is not.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import DeployPluginError
from mlflow_deploy_plugins.monitoring import target, tracking
from mlflow_deploy_plugins.monitoring.prepare import Prepared, prepare
from mlflow_deploy_plugins.monitoring.report import run_drift
from mlflow_deploy_plugins.monitoring.result import DriftResult, iso
from mlflow_deploy_plugins.monitoring.settings import (
    DEFAULT_CAT_METHOD,
    DEFAULT_DRIFT_SHARE,
    DEFAULT_NUM_METHOD,
    DEFAULT_SAMPLE_SIZE,
    DEFAULT_THRESHOLD,
    DriftSettings,
    resolve_window,
)

_logger = logging.getLogger(__name__)

HTML_ARTIFACT = "drift_report.html"
#: Evidently's JSON export of the snapshot (``Snapshot.json()``: every metric and test result).
#: Not the full widget dump (``Snapshot.dumps()``): that costs as much as a tenth of the report.
SNAPSHOT_ARTIFACT = "drift_snapshot.json"
SUMMARY_ARTIFACT = "drift_summary.json"  # ours: status, columns, sizes, window, settings


def drift_report(
    model_uri: str,
    current: Any,
    reference: Any = None,
    *,
    experiment_name: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    window: timedelta | str | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    num_method: str = DEFAULT_NUM_METHOD,
    cat_method: str = DEFAULT_CAT_METHOD,
    threshold: float = DEFAULT_THRESHOLD,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    per_column_method: dict[str, str] | None = None,
    columns: list[str] | None = None,
    intersection: bool = False,
    coerce: bool = False,
    seed: int | None = 0,
    client=None,
) -> DriftResult:
    """Compare ``current`` data with the model's reference sample; log one MLflow run.

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` of a source model
            (promoted: its ONNX twin holds the reference) or of our ONNX twin; also ``runs:/``
            or a path of a model of our flavor (nothing is tagged then).
        current: DataFrame, Parquet/CSV/JSONL file, or a payload-log directory of the serving
            runtime (``.part`` files still being written included, nothing counted twice).
        reference: same kinds of data; default the reference sample stored at promotion.
        experiment_name: default ``<registered name>-monitoring``.
        since, until, window: time window of payload records (ISO 8601 or datetime; ``window``
            like ``"24h"`` ends at ``until``, default now). Files outside it are not opened.
        sample_size: at most this many rows per side are compared (uniform sample, streamed).
        num_method, cat_method, threshold, drift_share, per_column_method: Evidently settings
            (see :class:`~mlflow_deploy_plugins.monitoring.settings.DriftSettings`).
        columns: compare only these columns (default: every input column and prediction).
        intersection: compare the columns both sides share instead of failing on missing or
            extra columns.
        coerce: convert columns whose type changed (numbers sent as text) instead of failing.
        seed: sampling seed (``None``: random).
        client: an ``MlflowClient`` (default: from the environment).

    Returns:
        DriftResult; ``.drift_detected`` is the dataset-level test's verdict.

    Raises:
        InvalidInputError: bad settings or data (the run, if started, ends FAILED with the reason).
        ModelNotFoundError: the URI does not resolve (no run is created).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    settings = DriftSettings(
        num_method=num_method,
        cat_method=cat_method,
        threshold=float(threshold),
        drift_share=float(drift_share),
        per_column_method=dict(per_column_method or {}),
        sample_size=int(sample_size),
        seed=seed,
    ).validate()
    since_t, until_t = resolve_window(since, until, window)
    client = client or MlflowClient()
    model = target.resolve(model_uri, client)
    experiment = experiment_name or model.default_experiment
    checked_at = datetime.now(timezone.utc)
    run_id, experiment_id = tracking.start_run(
        client,
        experiment,
        f"drift-{model.name or 'model'}-v{model.version or '0'}-{checked_at:%Y%m%dT%H%M%SZ}",
        _link_tags(model),
    )
    try:
        prepared = prepare(
            model, current, reference, settings, since_t, until_t, columns, intersection, coerce
        )
        result = _report(
            client, model, run_id, (experiment_id, experiment), prepared, settings, checked_at
        )
    except BaseException as e:  # KeyboardInterrupt too: never leave the run RUNNING
        reason = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        tracking.fail_run(client, run_id, reason)
        tracking.tag_versions_failed(
            client, model.tagged_versions, run_id, reason, checked_at.isoformat()
        )
        if isinstance(e, MlflowException) or not isinstance(e, Exception):
            raise
        raise DeployPluginError(f"Drift report for {model.label} failed: {reason}") from e
    _logger.info(result.summary())
    return result


def _link_tags(model: target.MonitoredModel) -> dict[str, str]:
    tags = {tag_keys.MODEL_URI: model.model_uri, tag_keys.KIND: "drift-report"}
    if model.name:
        tags.update({tag_keys.MODEL_NAME: model.name, tag_keys.MODEL_VERSION: model.version})
    if model.onnx:
        tags.update({tag_keys.ONNX_MODEL: model.onnx[0], tag_keys.ONNX_VERSION: model.onnx[1]})
    if model.source:
        tags.update(
            {tag_keys.SOURCE_MODEL: model.source[0], tag_keys.SOURCE_VERSION: model.source[1]}
        )
    return tags


def _report(
    client,
    model: target.MonitoredModel,
    run_id: str,
    experiment: tuple[str, str],
    prepared: Prepared,
    settings: DriftSettings,
    checked_at: datetime,
) -> DriftResult:
    timings = {"read_s": prepared.seconds}
    _warn_other_models(model, prepared.current_sample.models)

    started = time.perf_counter()
    outcome = run_drift(
        prepared.reference,
        prepared.current,
        prepared.expected.kinds,
        settings,
        set(prepared.expected.predictions),
    )
    timings["evidently_s"] = time.perf_counter() - started
    status = tag_keys.DRIFT_DETECTED if outcome.drift_detected else tag_keys.DRIFT_NONE

    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-drift-") as tmp:
        started = time.perf_counter()
        outcome.snapshot.save_html(os.path.join(tmp, HTML_ARTIFACT))
        evidently_json = outcome.snapshot.json()
        with open(os.path.join(tmp, SNAPSHOT_ARTIFACT), "w", encoding="utf-8") as f:
            f.write(evidently_json)
        timings["render_s"] = time.perf_counter() - started
        result = DriftResult(
            status=status,
            columns=outcome.columns,
            drift_share=settings.drift_share,
            run_id=run_id,
            experiment_id=experiment[0],
            experiment_name=experiment[1],
            model_uri=model.model_uri,
            model_name=model.name,
            model_version=model.version,
            tagged_versions=list(model.tagged_versions),
            reference_rows=len(prepared.reference),
            current_rows=len(prepared.current),
            current_rows_seen=prepared.current_sample.rows_seen,
            since=prepared.since,
            until=prepared.until,
            settings=settings,
            missing_columns=prepared.missing,
            extra_columns=prepared.extra,
            timings=timings,
            snapshot=outcome.snapshot,
        )
        summary = result.to_dict() | {"checked_at": checked_at.isoformat()}
        with open(os.path.join(tmp, SUMMARY_ARTIFACT), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, default=str)

        started = time.perf_counter()
        drift_tags = {
            tag_keys.DRIFT_STATUS: status,
            tag_keys.DRIFT_SHARE: f"{result.share:.4f}",
            tag_keys.DRIFT_COLUMNS: ",".join(result.drifted_columns),
        }
        tracking.log_everything(
            client,
            run_id,
            params=_params(model, prepared, settings),
            metrics=_metrics(result, prepared, timings),
            tags=drift_tags,
            artifacts_dir=tmp,
        )
    tracking.tag_versions(
        client,
        model.tagged_versions,
        drift_tags
        | {tag_keys.DRIFT_RUN_ID: run_id, tag_keys.DRIFT_CHECKED_AT: checked_at.isoformat()},
    )
    tracking.clear_error(client, model.tagged_versions)
    client.set_terminated(run_id, "FINISHED")
    timings["log_s"] = time.perf_counter() - started
    return result


def _warn_other_models(model: target.MonitoredModel, models: dict) -> None:
    """Payload records name the model that served them: say so when none of them is the checked
    model (a wrong directory?) or when they come from several models. Not refused: a server run
    with ``--model-name`` or named after its deployment writes that name instead."""
    names = {key.rsplit("/", 1)[0] for key in models}
    ours = {name for name, _ in model.tagged_versions} | {model.name}
    if names and not names & ours:
        _logger.warning(
            "The payload records were written by %s, not by %s: is this the right payload "
            "log? (a server started with --model-name, or named after its deployment, writes "
            "that name)",
            ", ".join(sorted(models)),
            " or ".join(sorted(n for n in ours if n)),
        )
    elif len(names) > 1:
        _logger.warning(
            "The payload records come from several models (%s): they are compared as one "
            "population",
            ", ".join(f"{k}: {v} records" for k, v in sorted(models.items())),
        )


def _params(model, prepared: Prepared, settings: DriftSettings) -> dict:
    since, until = prepared.since, prepared.until
    cur, ref = prepared.current_sample, prepared.reference_sample
    params: dict[str, Any] = {
        "model_uri": model.model_uri,
        "reference.source": prepared.reference_origin,
        "reference.rows": len(prepared.reference),
        "reference.rows_seen": ref.rows_seen,
        "reference.predictions": prepared.reference_predictions,
        "current.source": cur.location,
        "current.format": cur.origin,
        "current.rows": len(prepared.current),
        "current.rows_seen": cur.rows_seen,
        "current.predictions": prepared.current_predictions,
        "window.since": iso(since) or "none",
        "window.until": iso(until) or "none",
        "columns": ",".join(prepared.current.columns),
        "intersection": prepared.intersection,
        "coerce": prepared.coerce,
        **settings.params(),
    }
    if cur.origin == "payload-log":
        params.update(
            {
                "current.files_read": cur.files_read,
                "current.files_skipped": cur.files_skipped,
                "current.bad_lines": cur.bad_lines,
                "current.models": ",".join(f"{k}:{v}" for k, v in sorted(cur.models.items())),
            }
        )
    if prepared.missing:
        params["columns.missing"] = ",".join(prepared.missing)
    if prepared.extra:
        params["columns.extra"] = ",".join(prepared.extra)
    return params


def _metrics(result: DriftResult, prepared: Prepared, timings: dict) -> dict[str, float]:
    metrics = {
        "drift.share": result.share,
        "drift.count": len(result.drifted_columns),
        "drift.columns": len(result.columns),
        "drift.detected": float(result.drift_detected),
        "current.rows": result.current_rows,
        "current.rows_seen": result.current_rows_seen,
        "reference.rows": result.reference_rows,
    }
    for c in result.columns:
        metrics[tracking.metric_key("drift_score", c.column, c.method)] = c.score
        metrics[tracking.metric_key("drifted", c.column)] = float(c.drifted)
    metrics.update({f"timing.{k}": v for k, v in timings.items()})
    return metrics
