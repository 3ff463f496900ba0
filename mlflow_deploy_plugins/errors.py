"""Domain exceptions: one flat hierarchy, each with an MLflow error code.

Third-party exceptions are translated into these at the boundary (``raise ... from e``), so users
and the ``mlflow`` CLI always see an ``MlflowException`` with a code and a message that names the
offending thing.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)


class DeployPluginError(MlflowException):
    """Base class of every error this package raises on purpose."""

    error_code = INTERNAL_ERROR

    def __init__(self, message: str, **kwargs):
        super().__init__(message, error_code=self.error_code, **kwargs)


class InvalidInputError(DeployPluginError):
    """Caller input (a sample, a config value, a column) is not what was expected."""

    error_code = INVALID_PARAMETER_VALUE


class ModelNotFoundError(DeployPluginError):
    """A model URI, registered model, version or alias does not exist."""

    error_code = RESOURCE_DOES_NOT_EXIST


class UnsupportedModelError(DeployPluginError):
    """No converter handles this flavor or estimator."""

    error_code = INVALID_PARAMETER_VALUE


class ConversionError(DeployPluginError):
    """A supported model failed to convert to ONNX."""

    error_code = INTERNAL_ERROR


class ParityError(DeployPluginError):
    """The ONNX model does not predict like its source within the tolerances."""

    error_code = INVALID_PARAMETER_VALUE

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class AlreadyExistsError(DeployPluginError):
    error_code = RESOURCE_ALREADY_EXISTS
