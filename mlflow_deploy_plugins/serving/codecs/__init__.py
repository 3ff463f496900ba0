"""Request bodies -> ONNX feeds, and outputs -> response bodies, for the Open Inference Protocol V2
(JSON and the binary tensor extension) and MLflow's scoring protocol. Pure functions, no I/O.

Every client mistake raises a ``ServingError`` subclass (``errors.py``) naming the field at fault.
Numeric data never goes through a per-element Python loop: ``np.asarray`` on the parsed list, or
``np.frombuffer`` on binary tensor data.

Modules: ``_common`` (limits, dtype tables, decoded requests, decode plans, shared helpers), ``v2``
(Open Inference Protocol V2) and ``mlflow`` (MLflow scoring). This package re-exports their API.
"""

from __future__ import annotations

from mlflow_deploy_plugins.serving.codecs._common import (
    DEFAULT_MAX_ELEMENTS,
    V2_DTYPES,
    DecodedRequest,
    columns_from_feed,
)
from mlflow_deploy_plugins.serving.codecs._common import _plan as _plan
from mlflow_deploy_plugins.serving.codecs.mlflow import (
    MLFLOW_FORMATS,
    PREDICT_METHODS,
    MlflowRequest,
    decode_mlflow,
    encode_mlflow,
    mlflow_prediction,
    role_for,
)
from mlflow_deploy_plugins.serving.codecs.v2 import (
    HEADER_LENGTH,
    MAX_RANK,
    V2_BINARY_CONTENT_TYPE,
    V2Request,
    decode_v2,
    encode_v2,
)
from mlflow_deploy_plugins.serving.codecs.v2 import _bind_v2 as _bind_v2
from mlflow_deploy_plugins.serving.codecs.v2 import _v2_columns_fast as _v2_columns_fast
from mlflow_deploy_plugins.serving.codecs.v2 import _v2_inputs as _v2_inputs

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "HEADER_LENGTH",
    "MAX_RANK",
    "MLFLOW_FORMATS",
    "PREDICT_METHODS",
    "V2_BINARY_CONTENT_TYPE",
    "V2_DTYPES",
    "DecodedRequest",
    "MlflowRequest",
    "V2Request",
    "columns_from_feed",
    "decode_mlflow",
    "decode_v2",
    "encode_mlflow",
    "encode_v2",
    "mlflow_prediction",
    "role_for",
]
