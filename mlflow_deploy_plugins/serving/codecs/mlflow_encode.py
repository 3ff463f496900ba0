"""MLflow scoring protocol responses: the output role ``predict_method`` selects, and the
``{"predictions": ...}`` body."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from mlflow_deploy_plugins.core.iospec import PREDICT_METHODS, IOSpec, SchemaError
from mlflow_deploy_plugins.serving.codecs.values import as_text, show
from mlflow_deploy_plugins.serving.errors import BadRequest

_logger = logging.getLogger(__name__)


def role_for(io: IOSpec, predict_method: Any = None) -> str:
    """The output role ``/invocations`` returns for ``params.predict_method``
    (``IOSpec.role_for``, shared with the pyfunc flavor).

    Raises:
        BadRequest: unknown ``predict_method``, or the model has no output for it.
    """
    if predict_method is not None and type(predict_method) is not str:
        raise BadRequest(
            f"predict_method must be one of {sorted(PREDICT_METHODS)}, got {show(predict_method)}",
            field="predict_method",
        )
    try:
        return io.role_for(predict_method)
    except SchemaError as e:
        raise BadRequest(str(e), field="predict_method") from None


def mlflow_prediction(io: IOSpec, role: str, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The array the pyfunc flavor returns for ``role``, from the session's outputs."""
    spec = io.output_for(role)
    return io.as_source(spec, outputs[spec.name])


def encode_mlflow(outputs_for_role: np.ndarray) -> bytes:
    """``{"predictions": [...]}`` as ``mlflow models serve`` returns a numpy result."""
    arr = np.asarray(outputs_for_role)
    if arr.ndim and arr.dtype.kind in "fiub" and arr.dtype.isnative:
        return orjson.dumps(
            {"predictions": np.ascontiguousarray(arr)}, option=orjson.OPT_SERIALIZE_NUMPY
        )
    return orjson.dumps({"predictions": arr.tolist()}, default=as_text)
