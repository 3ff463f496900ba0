"""Every registry tag key this package writes (documented in docs/registry.md)."""

from __future__ import annotations

from mlflow_deploy_plugins.core.constants import TAG_PREFIX as PREFIX

# On the source version
STATUS = PREFIX + "status"  # converted | failed | refused (automation: untrusted pickle)
ERROR = PREFIX + "error"  # readable reason of the last failure
ONNX_MODEL = PREFIX + "onnx_model"
ONNX_VERSION = PREFIX + "onnx_version"

# On the ONNX twin (registered model and versions)
KIND = PREFIX + "kind"  # "onnx"
SOURCE_MODEL = PREFIX + "source_model"
SOURCE_VERSION = PREFIX + "source_version"
IDEMPOTENCY_KEY = PREFIX + "idempotency_key"
OPTIONS_HASH = PREFIX + "options_hash"
CONVERTER = PREFIX + "converter"
RUN_ID = PREFIX + "run_id"
PROMOTED_BY = PREFIX + "promoted_by"  # promote | webhook | watch (registry/ownership.py)
PROMOTED_AT = PREFIX + "promoted_at"  # UTC ISO 8601
# On the ONNX twin registered model, one record per slot (registry/ownership.py):
# "mlflow_deploy.alias.<alias>.{source_version,version,set_by,set_at}" (".stage.<stage>." too)

# On both
PARITY_PREFIX = PREFIX + "parity."  # parity.passed, parity.rows, parity.<role>.<figure>
PARITY_SMALL_SAMPLE = PARITY_PREFIX + "small_sample"

# Drift monitoring (mlflow_deploy_plugins.monitoring): on the model versions a report checked
# (the version the URI resolves to and, for an ONNX twin, its source version), and on the run.
DRIFT_PREFIX = PREFIX + "drift."
DRIFT_STATUS = DRIFT_PREFIX + "status"  # drift | no_drift | failed (the latest check)
DRIFT_SHARE = DRIFT_PREFIX + "share"  # share of compared columns that drifted
DRIFT_COLUMNS = DRIFT_PREFIX + "columns"  # the drifted columns, comma-separated
DRIFT_RUN_ID = DRIFT_PREFIX + "run_id"  # the monitoring run holding the report
DRIFT_CHECKED_AT = DRIFT_PREFIX + "checked_at"  # UTC ISO 8601 time of the check
DRIFT_ERROR = DRIFT_PREFIX + "error"  # why the latest check failed
# On the monitoring run only: which model version it checked.
MODEL_NAME = PREFIX + "model_name"
MODEL_VERSION = PREFIX + "model_version"
MODEL_URI = PREFIX + "model_uri"

DRIFT_DETECTED = "drift"
DRIFT_NONE = "no_drift"
DRIFT_FAILED = "failed"

STATUS_CONVERTED = "converted"
STATUS_FAILED = "failed"
STATUS_REFUSED = "refused"

#: MLflow limits tag values to 5000 characters (8000 on newer servers): keep errors readable.
MAX_VALUE = 5000


def clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def parity_tags(report) -> dict[str, str]:
    tags = {
        PARITY_PREFIX + "passed": str(report.passed).lower(),
        PARITY_PREFIX + "rows": str(report.rows),
        # rows with synthesized missing values among them (issue 11: NaN semantics are gated)
        PARITY_PREFIX + "missing_value_rows": str(getattr(report, "missing_value_rows", 0)),
    }
    for o in report.outputs:
        for key in ("max_abs_error", "max_rel_error", "label_agreement"):
            value = getattr(o, key)
            if value is not None:
                tags[f"{PARITY_PREFIX}{o.role}.{key}"] = f"{value:.6g}"
    if report.small_sample:
        tags[PARITY_SMALL_SAMPLE] = "true"
    return tags


# ------------------------------------------------------------------------------------------------
# Promotion automation (registry/pipeline.py, webhooks.py, watch.py, audit.py; docs/automation.md)
# ------------------------------------------------------------------------------------------------
# On the ONNX twin registered model: the twin version each deployment serves, one key per
# deployment: "mlflow_deploy.deployment.<target>.<deployment name>" -> "<twin version>".
DEPLOYMENT_PREFIX = PREFIX + "deployment."
# On the ONNX twin version: the latest deployment attempt of that version.
DEPLOY_STATUS = PREFIX + "deploy_status"  # deployed | failed
DEPLOY_ERROR = PREFIX + "deploy_error"
STATUS_DEPLOYED = "deployed"
# On the audit runs (one MLflow run per handled event), beside SOURCE_MODEL, SOURCE_VERSION,
# ONNX_MODEL, ONNX_VERSION and ERROR:
AUDIT_EVENT = PREFIX + "event"  # model_version_alias.created | ...deleted | reconcile | poll
AUDIT_DELIVERY_IDS = PREFIX + "delivery_ids"  # X-MLflow-Delivery-Id values, comma-separated
AUDIT_ALIAS = PREFIX + "alias"
AUDIT_STAGE = PREFIX + "stage"
AUDIT_RESULT = PREFIX + "result"  # converted | reused | removed | failed
AUDIT_PREVIOUS_ONNX_VERSION = PREFIX + "previous_onnx_version"
AUDIT_TARGET = PREFIX + "target"
AUDIT_DEPLOYMENT = PREFIX + "deployment"
AUDIT_DEPLOYED_URI = PREFIX + "deployed_model_uri"


def deployment_tag(target: str, deployment_name: str) -> str:
    """The twin registered-model tag key recording what ``deployment_name`` on ``target`` serves."""
    import re

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{target}.{deployment_name}")
    return DEPLOYMENT_PREFIX + safe
