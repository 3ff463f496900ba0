"""Request bodies -> ONNX feeds, and outputs -> response bodies, for the Open Inference Protocol V2
(JSON and the binary tensor extension) and MLflow's scoring protocol. Pure functions, no I/O.

Every client mistake raises a ``ServingError`` subclass (``errors.py``) naming the field at fault.
Numeric data never goes through a per-element Python loop: ``np.asarray`` on the parsed list, or
``np.frombuffer`` on binary tensor data.

Modules: ``base`` (element limit, dtype tables, decoded requests, decode plans) and ``values``
(conversions, JSON loading, message helpers) are shared, ``content_encoding`` undoes a request's
``Content-Encoding``; ``v2_decode``, ``v2_bind``, ``v2_binary``
(the binary tensor extension, both ways) and ``v2_encode`` are Open Inference Protocol V2;
``mlflow_decode``, ``mlflow_tables``, ``mlflow_csv`` and ``mlflow_encode`` are MLflow scoring;
``tfserving`` is TF Serving's REST API (decoded through ``mlflow_decode.mlflow_table``; imported as a
module by its routes). This package re-exports the V2 and MLflow public API; the other names are
shared inside the package only (tests import them from their modules).
"""

from __future__ import annotations

from mlflow_deploy_plugins.serving.codecs.base import (
    DEFAULT_MAX_ELEMENTS,
    V2_DTYPES,
    DecodedRequest,
    columns_from_feed,
)
from mlflow_deploy_plugins.serving.codecs.content_encoding import decode_body
from mlflow_deploy_plugins.serving.codecs.mlflow_decode import (
    MLFLOW_FORMATS,
    MlflowRequest,
    decode_mlflow,
)
from mlflow_deploy_plugins.serving.codecs.mlflow_encode import (
    PREDICT_METHODS,
    encode_mlflow,
    mlflow_prediction,
    role_for,
)
from mlflow_deploy_plugins.serving.codecs.v2_binary import HEADER_LENGTH, V2_BINARY_CONTENT_TYPE
from mlflow_deploy_plugins.serving.codecs.v2_decode import (
    MAX_RANK,
    V2Request,
    decode_v2,
    decode_v2_document,
)
from mlflow_deploy_plugins.serving.codecs.v2_encode import (
    encode_v2,
    json_data,
    model_metadata,
    response_outputs,
)

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
    "decode_body",
    "decode_mlflow",
    "decode_v2",
    "decode_v2_document",
    "encode_mlflow",
    "encode_v2",
    "json_data",
    "mlflow_prediction",
    "model_metadata",
    "response_outputs",
    "role_for",
]
