"""Target-independent deployment helpers: model URI -> bundle, label names, ports, readiness.

Shared by every target module (onnx-docker, mlserver, onnx-sagemaker). Import it as a module:
it defines no ``BaseDeploymentClient`` subclass, so MLflow's plugin loader, which counts every
such class visible in a target module, never sees two.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
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
    error_code = RESOURCE_DOES_NOT_EXIST


class EngineUnavailableError(DeployPluginError):
    """The container engine / cloud API a target needs does not answer."""

    error_code = TEMPORARILY_UNAVAILABLE


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInputError(
            f"Deployment name {name!r} is invalid: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


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
        return not self.onnx_model

    def labels(self) -> dict[str, str]:
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


def resolve_model(model_uri: str, bundle_dir: str, **bundle_kwargs) -> ResolvedModel:
    """Build the serving bundle of ``model_uri`` in ``bundle_dir`` (converting non-ONNX models
    through the parity gate, without registry writes) and describe its lineage."""
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


# --- ports -----------------------------------------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (or holds) ``host:port``.

    Binds without SO_REUSEPORT: a listener that set it (our own servers) still makes the bind
    fail, so the answer is the same for every kind of listener.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR ignores TIME_WAIT leftovers but not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidInputError(
                    f"Address {host!r} is not an address of this machine"
                ) from e
            raise
    return False


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def endpoint_url(host: str, port: int) -> str:
    host = client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- readiness -------------------------------------------------------------------------------


class NotReadyYet(Exception):
    """Raised by a readiness check to mean "keep polling"."""


def http_ready(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200 (a readiness probe); False on any error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.05,
    max_interval_s: float = 0.5,
    what: str = "the deployment",
) -> float:
    """Call ``check`` until it returns True; return the seconds it took.

    ``check`` may raise to abort (e.g. a :class:`DeploymentError` when the server exited).
    The poll interval grows from ``interval_s`` to ``max_interval_s``.

    Raises:
        TimeoutError: ``check`` did not succeed within ``timeout_s`` seconds.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    delay = interval_s
    while True:
        with contextlib.suppress(NotReadyYet):
            if check():
                return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} was not ready within {timeout_s:g} s")
        time.sleep(delay)
        delay = min(max_interval_s, delay * 1.5)
