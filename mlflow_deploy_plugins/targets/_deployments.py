"""What every target shares about a deployment: errors, name, flavor check, label keys, and the
model it serves (model URI -> serving bundle + lineage, written to and read back from labels)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from mlflow_deploy_plugins.core.constants import TAG_PREFIX
from mlflow_deploy_plugins.errors import DeployPluginError, InvalidInputError, ModelNotFoundError

_logger = logging.getLogger(__name__)

#: Every label (container, image, tag) we write starts with this prefix.
LABEL_PREFIX = TAG_PREFIX
LABEL_TARGET = LABEL_PREFIX + "target"
LABEL_DEPLOYMENT = LABEL_PREFIX + "deployment"
LABEL_MODEL_URI = LABEL_PREFIX + "model_uri"
LABEL_SOURCE_MODEL = LABEL_PREFIX + "source_model"
LABEL_SOURCE_VERSION = LABEL_PREFIX + "source_version"
LABEL_SOURCE_RUN = LABEL_PREFIX + "source_run"
LABEL_ONNX_MODEL = LABEL_PREFIX + "onnx_model"
LABEL_ONNX_VERSION = LABEL_PREFIX + "onnx_version"
LABEL_SERVED_NAME = LABEL_PREFIX + "served_name"
LABEL_SERVED_VERSION = LABEL_PREFIX + "served_version"
LABEL_SHA256 = LABEL_PREFIX + "sha256"
LABEL_PORT = LABEL_PREFIX + "port"
LABEL_HOST = LABEL_PREFIX + "host"
LABEL_CONFIG = LABEL_PREFIX + "config"
LABEL_CREATED = LABEL_PREFIX + "created_at"
LABEL_CONTENT_HASH = LABEL_PREFIX + "content_hash"
LABEL_IMAGE = LABEL_PREFIX + "image"
LABEL_NETWORK_MODE = LABEL_PREFIX + "network_mode"
#: Set instead of ``LABEL_DEPLOYMENT`` on a ``run_local`` container: it is no deployment.
LABEL_RUN_LOCAL = LABEL_PREFIX + "run_local"

#: ``--flavor`` values an ONNX-serving target accepts (models of other flavors are converted).
ACCEPTED_FLAVORS = (None, "onnx", "mlflow_deploy_plugins", "python_function")
#: Deployment names become container names and label values: keep them portable.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class DeploymentError(DeployPluginError):
    """A deployment could not be created or updated; ``logs`` holds the server's last lines."""

    error_code = INTERNAL_ERROR

    def __init__(self, message: str, logs: str = ""):
        super().__init__(f"{message}\n--- last log lines ---\n{logs}" if logs else message)
        self.summary = message
        self.logs = logs


class DeploymentNotFoundError(DeployPluginError):
    """No deployment of that name on the target."""

    error_code = RESOURCE_DOES_NOT_EXIST


class EngineUnavailableError(DeployPluginError):
    """The container engine / cloud API a target needs does not answer."""

    error_code = TEMPORARILY_UNAVAILABLE


def validate_name(name: str) -> str:
    """Check a deployment name (it becomes container names and label values).

    Args:
        name: the ``--name`` given.

    Returns:
        ``name``.

    Raises:
        InvalidInputError: not 1-63 letters, digits, '_', '.' or '-' starting with a letter or digit.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInputError(
            f"Deployment name {name!r} is invalid: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_flavor(flavor: str | None, target: str) -> None:
    """Refuse a ``--flavor`` an ONNX-serving target cannot deploy.

    Args:
        flavor: the ``--flavor`` given (None when left out).
        target: the target's name, for the message.

    Raises:
        InvalidInputError: ``flavor`` is not one of :data:`ACCEPTED_FLAVORS`.
    """
    if flavor not in ACCEPTED_FLAVORS:
        raise InvalidInputError(
            f"Flavor {flavor!r} is not deployable by {target}: it serves ONNX (models of other "
            "flavors are converted); leave --flavor out or use 'onnx'"
        )


def read_token(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped).

    Args:
        path: the ``-C auth_token_file=`` on this machine.

    Returns:
        The token; empty when the file is.

    Raises:
        InvalidInputError: the file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise InvalidInputError(f"auth_token_file {path!r} cannot be read: {e}") from e


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI resolved to a serving bundle, with where it came from."""

    model_uri: str
    bundle: object  # mlflow_deploy_plugins.bundle.Bundle
    source_model: str
    source_version: str
    source_run: str
    onnx_model: str  # empty when the model was converted at deploy time (not registered)
    onnx_version: str
    served_name: str
    served_version: str
    sha256: str

    @property
    def converted_at_deploy(self) -> bool:
        """True when the model was converted now (no registered ONNX version)."""
        return not self.onnx_model

    def lineage(self) -> str:
        """One line for progress messages: served, deployed and source versions."""
        deployed = (
            f"{self.onnx_model} v{self.onnx_version}"
            if self.onnx_model
            else "converted at deploy time"
        )
        source = (
            f"source {self.source_model} v{self.source_version}"
            if self.source_model
            else f"source {self.model_uri}"
        )
        return f"{self.served_name} v{self.served_version}: {deployed}, {source}"

    def labels(self) -> dict[str, str]:
        """The lineage as labels (read back by :func:`describe_lineage`)."""
        return {
            LABEL_MODEL_URI: self.model_uri,
            LABEL_SOURCE_MODEL: self.source_model,
            LABEL_SOURCE_VERSION: self.source_version,
            LABEL_SOURCE_RUN: self.source_run,
            LABEL_ONNX_MODEL: self.onnx_model,
            LABEL_ONNX_VERSION: self.onnx_version,
            LABEL_SERVED_NAME: self.served_name,
            LABEL_SERVED_VERSION: self.served_version,
            LABEL_SHA256: self.sha256,
        }


def describe_lineage(labels: dict[str, str]) -> dict[str, str]:
    """The lineage fields of ``get_deployment``/``list_deployments``, read back from labels.

    Args:
        labels: labels written from :meth:`ResolvedModel.labels`.

    Returns:
        ``model_uri``, ``source_*``, ``deployed_*``, ``served_*`` and ``sha256``, in that order.
    """
    onnx_model = labels.get(LABEL_ONNX_MODEL, "")
    return {
        "model_uri": labels.get(LABEL_MODEL_URI),
        "source_model": labels.get(LABEL_SOURCE_MODEL, ""),
        "source_version": labels.get(LABEL_SOURCE_VERSION, ""),
        "source_run": labels.get(LABEL_SOURCE_RUN, ""),
        "deployed_model": onnx_model or "(converted at deploy time, not registered)",
        "deployed_version": labels.get(LABEL_ONNX_VERSION, ""),
        "served_model": labels.get(LABEL_SERVED_NAME, ""),
        "served_version": labels.get(LABEL_SERVED_VERSION, ""),
        "sha256": labels.get(LABEL_SHA256, ""),
    }


def resolve_model(model_uri: str, bundle_dir: str, **bundle_kwargs) -> ResolvedModel:
    """Build the serving bundle of ``model_uri`` and describe its lineage.

    Non-ONNX models are converted through the parity gate, without registry writes.

    Args:
        model_uri: ``models:/name/version``, ``models:/name@alias``, ``runs:/...`` or a path.
        bundle_dir: where the bundle is written.
        **bundle_kwargs: passed to ``bundle.build_bundle``.

    Returns:
        The bundle and its lineage.

    Raises:
        InvalidInputError: no model URI.
        ModelNotFoundError: MLflow cannot resolve or read the model.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.bundle import build_bundle

    if not model_uri or not isinstance(model_uri, str):
        raise InvalidInputError("A model URI is required (models:/name/version, runs:/..., path)")
    try:
        bundle = build_bundle(model_uri, bundle_dir, **bundle_kwargs)
    except DeployPluginError:
        raise
    except MlflowException as e:
        raise ModelNotFoundError(f"Model '{model_uri}' could not be resolved: {e.message}") from e
    except OSError as e:
        raise ModelNotFoundError(f"Model '{model_uri}' could not be read: {e}") from e
    m = bundle.manifest
    source, onnx_model = m.source, m.onnx_model
    return ResolvedModel(
        model_uri=model_uri,
        bundle=bundle,
        source_model=str(source.get("model_name") or ""),
        source_version=str(source.get("model_version") or ""),
        source_run=str(source.get("run_id") or ""),
        onnx_model=str(onnx_model.get("name") or ""),
        onnx_version=str(onnx_model.get("version") or ""),
        served_name=m.name,
        served_version=m.version,
        sha256=m.sha256,
    )
