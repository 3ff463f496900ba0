"""The conversion run of a promotion: what was converted, how, and the parity it reached."""

from __future__ import annotations

import logging

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.onnx.convert import ConversionResult

_logger = logging.getLogger(__name__)


def log_conversion_run(
    result: ConversionResult, source_mv: ModelVersion, key: str, experiment_name: str | None
) -> tuple[str, str, str]:
    """Log the conversion as an MLflow run: params, parity and timing metrics, the parity
    report and the ONNX model of our flavor.

    Args:
        result: the conversion that passed the parity gate.
        source_mv: the source model version (names the run, picks the default experiment).
        key: the promotion's idempotency key (tagged on the run).
        experiment_name: where to log (default: the source run's experiment, else the active one).

    Returns:
        ``(run_id, model_uri, model_id)`` of the logged model.
    """
    from mlflow_deploy_plugins.onnx.flavor import log_model

    experiment_id = None
    if experiment_name:
        mlflow.set_experiment(experiment_name)
    elif source_mv.run_id:
        try:
            experiment_id = MlflowClient().get_run(source_mv.run_id).info.experiment_id
        except MlflowException:  # run deleted or unreadable: log where we are
            experiment_id = None
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"onnx-convert-{source_mv.name}-v{source_mv.version}",
        tags={
            tag_keys.SOURCE_MODEL: source_mv.name,
            tag_keys.SOURCE_VERSION: str(source_mv.version),
            tag_keys.IDEMPOTENCY_KEY: key,
        },
        nested=mlflow.active_run() is not None,
    ) as run:
        mlflow.log_params(
            {
                "source_model_uri": result.source.model_uri,
                "source_flavor": result.source.flavor,
                "converter": f"{result.converter}=={result.converter_version}",
                "options_hash": result.options.fingerprint(),
                "atol": result.parity.tolerances.atol,
                "rtol": result.parity.tolerances.rtol,
                "min_label_agreement": result.parity.tolerances.min_label_agreement,
                "sample_origin": result.parity.sample_origin,
                "sample_rows": result.parity.rows,
                "quantized": result.optimization.quantized,
            }
        )
        mlflow.log_metrics(
            {
                **result.parity.metrics(),
                **result.optimization.metrics(),
                **{f"timing.{k}": v for k, v in result.timings.items()},
            }
        )
        mlflow.log_dict(result.parity.to_dict(), "parity_report.json")
        info = log_model(result, name="onnx_model")
        return run.info.run_id, info.model_uri, info.model_id
