"""Every registry tag key this package writes (documented in docs/registry.md)."""

from __future__ import annotations

PREFIX = "mlflow_deploy."

# On the source version
STATUS = PREFIX + "status"  # converted | failed
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

# On both
PARITY_PREFIX = PREFIX + "parity."  # parity.passed, parity.rows, parity.<role>.<figure>
PARITY_SMALL_SAMPLE = PARITY_PREFIX + "small_sample"

STATUS_CONVERTED = "converted"
STATUS_FAILED = "failed"

#: MLflow limits tag values to 5000 characters (8000 on newer servers): keep errors readable.
MAX_VALUE = 5000


def clip(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def parity_tags(report) -> dict[str, str]:
    tags = {
        PARITY_PREFIX + "passed": str(report.passed).lower(),
        PARITY_PREFIX + "rows": str(report.rows),
    }
    for o in report.outputs:
        for key in ("max_abs_error", "max_rel_error", "label_agreement"):
            value = getattr(o, key)
            if value is not None:
                tags[f"{PARITY_PREFIX}{o.role}.{key}"] = f"{value:.6g}"
    if report.small_sample:
        tags[PARITY_SMALL_SAMPLE] = "true"
    return tags
