"""Dockerfile recipes: what one kind of serving image is made of (``builder`` does the rest);
the onnx-docker target's is ``ONNX_SERVING``, the mlserver target's ``MLSERVER``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from mlflow_deploy_plugins.core.constants import MLSERVER_SETTINGS_ENV, PACKAGE
from mlflow_deploy_plugins.serving.settings import BUNDLE_ENV, ServingSettings
from mlflow_deploy_plugins.targets import _deployments
from mlflow_deploy_plugins.targets._images.wheels import LOCK_FILE

_logger = logging.getLogger(__name__)

VENV = "/opt/venv"
BUNDLE_DIR = "/opt/ml/model"
#: Where the server listens inside the container (published in bridge network mode).
CONTAINER_PORT = 8080
#: The image's USER; containers run as ``-C user=`` (this by default).
DEFAULT_USER = "10001:10001"
HEALTH_PATH = "/v2/health/ready"


class Recipe(Protocol):
    """One kind of serving image.

    The builder assembles the build context (``wheels/``: the pinned runtime wheels and
    ``wheels.LOCK_FILE``; ``package/``: this package's wheel; ``bundle/``: the serving bundle);
    the recipe renders the Dockerfile for it and says which extra of this package the image
    runs, where its server listens and how it reports that it is ready.
    """

    #: The deployment target whose images this makes (the ``mlflow_deploy.target`` label).
    target: str
    #: Bump when the Dockerfile changes meaning (part of every image's content hash).
    template_version: str
    #: The extra of this package whose pinned dependencies the image installs.
    runtime_extra: str
    #: Where the server listens inside the container, and its readiness route.
    container_port: int
    health_path: str
    #: What the server logs once it listens with the model warm (see ``_rollout``).
    ready_line: re.Pattern
    #: The Dockerfile's build stage, tagged on its own by the builder (None: single stage).
    build_stage: str | None

    def dockerfile(self, base_image: str, package_wheel: str, labels: Mapping[str, str]) -> str:
        """The Dockerfile text for the build context."""
        ...

    def labels(self, resolved: _deployments.ResolvedModel, base_image: str) -> dict[str, str]:
        """The image labels (without the content hash and creation time the builder adds)."""
        ...


def lineage_labels(
    resolved: _deployments.ResolvedModel, base_image: str, target: str, description: str
) -> dict[str, str]:
    """OCI labels (model name, version, source run) plus ours (lineage, sha256).

    Args:
        resolved: the model the image serves.
        base_image: the image it is built FROM.
        target: the deployment target building it.
        description: the OCI description.

    Returns:
        The non-empty labels.
    """
    labels = {
        "org.opencontainers.image.title": resolved.served_name,
        "org.opencontainers.image.version": resolved.served_version,
        "org.opencontainers.image.revision": resolved.source_run,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.base.name": base_image,
        _deployments.LABEL_TARGET: target,
        _deployments.LABEL_SHA256: resolved.sha256,
        _deployments.LABEL_SOURCE_MODEL: resolved.source_model,
        _deployments.LABEL_SOURCE_VERSION: resolved.source_version,
        _deployments.LABEL_SOURCE_RUN: resolved.source_run,
        _deployments.LABEL_ONNX_MODEL: resolved.onnx_model,
        _deployments.LABEL_ONNX_VERSION: resolved.onnx_version,
        _deployments.LABEL_SERVED_NAME: resolved.served_name,
        _deployments.LABEL_SERVED_VERSION: resolved.served_version,
    }
    return {k: v for k, v in labels.items() if v}


def _label_lines(labels: Mapping[str, str]) -> str:
    return " \\\n      ".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items())
    )


def render_dockerfile(
    recipe: Recipe,
    base_image: str,
    package_wheel: str,
    labels: Mapping[str, str],
    *,
    environment: Mapping[str, str],
    healthcheck: str,
    entrypoint: list[str],
    command: list[str] | None = None,
) -> str:
    """The two-stage Dockerfile every recipe renders: the pinned wheels and this package into a
    venv (build stage), then base + venv + bundle as a non-root user.

    Args:
        recipe: the recipe (target, template version, port).
        base_image: the image both stages start FROM.
        package_wheel: the file name of this package's wheel in ``package/``.
        labels: the image labels (quoted and escaped here).
        environment: the server's own variables (after the venv's).
        healthcheck: Python code the HEALTHCHECK runs (fails when not ready).
        entrypoint: the image's ENTRYPOINT.
        command: its CMD (none when None).

    Returns:
        The Dockerfile text (part of the image's content hash: keep it stable).
    """
    py = f"{VENV}/bin/python"
    pip = f"{py} -m pip --disable-pip-version-check --no-cache-dir"
    site = f"{VENV}/lib"
    variables = {
        "PATH": f"{VENV}/bin:$PATH",
        "VIRTUAL_ENV": VENV,
        "HOME": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        BUNDLE_ENV: BUNDLE_DIR,
        **environment,
    }
    env = " \\\n    ".join(f"{k}={v}" for k, v in variables.items())
    check = json.dumps(["python", "-c", healthcheck])
    cmd = f"\nCMD {json.dumps(command)}" if command else ""
    return f"""\
# Generated by mlflow-deploy-plugins ({recipe.target} target); template {recipe.template_version}.
FROM {base_image} AS build
COPY wheels/ /tmp/wheels/
# Third-party wheels first: this layer is reused while the lock is unchanged.
RUN python3 -m venv {VENV} \\
 && {pip} install --no-index --no-deps --no-compile --find-links /tmp/wheels \\
      -r /tmp/wheels/{LOCK_FILE} \\
 && find {site} -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {{}} + \\
 && {py} -m compileall -q -j 0 --invalidation-mode unchecked-hash {site}
COPY package/ /tmp/package/
RUN {pip} install --no-index --no-deps --no-compile /tmp/package/{package_wheel} \\
 && {pip} uninstall -y pip setuptools wheel \\
 && {py} -m compileall -q --invalidation-mode unchecked-hash {site}/python3*/site-packages/{PACKAGE} \\
 && rm -rf /tmp/package {VENV}/bin/activate* {VENV}/bin/Activate.ps1 {VENV}/bin/pip*

FROM {base_image}
COPY --from=build {VENV} {VENV}
COPY bundle/ {BUNDLE_DIR}/
ENV {env}
USER {DEFAULT_USER}
EXPOSE {recipe.container_port}
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD {check}
LABEL {_label_lines(labels)}
ENTRYPOINT {json.dumps(entrypoint)}{cmd}
"""


@dataclass(frozen=True)
class OnnxServingRecipe:
    """This package's serving runtime (``python -m mlflow_deploy_plugins.serving``) on
    onnxruntime: two stages, wheels -> venv, then base + venv + bundle as a non-root user."""

    target: str = "onnx-docker"
    template_version: str = "1"
    runtime_extra: str = "serve"
    container_port: int = CONTAINER_PORT
    health_path: str = HEALTH_PATH
    #: What serving/server.py logs once its socket listens and the model is warm.
    ready_line: re.Pattern = re.compile(r'"msg":"Serving .* on http://')
    build_stage: str | None = "build"

    def dockerfile(self, base_image: str, package_wheel: str, labels: Mapping[str, str]) -> str:
        """Render the Dockerfile (see :func:`render_dockerfile`)."""
        host_var, port_var = ServingSettings.env_var("host"), ServingSettings.env_var("port")
        return render_dockerfile(
            self,
            base_image,
            package_wheel,
            labels,
            environment={host_var: "0.0.0.0", port_var: str(self.container_port)},
            healthcheck=self._healthcheck(host_var, port_var),
            entrypoint=["python", "-m", f"{PACKAGE}.serving"],
            command=["serve"],
        )

    def labels(self, resolved: _deployments.ResolvedModel, base_image: str) -> dict[str, str]:
        """OCI and lineage labels of an ONNX serving image (see :func:`lineage_labels`)."""
        description = (
            f"ONNX serving image of {resolved.served_name} v{resolved.served_version} "
            f"(sha256 {resolved.sha256})"
        )
        return lineage_labels(resolved, base_image, self.target, description)

    def _healthcheck(self, host_var: str, port_var: str) -> str:
        # The probe reads where the server listens from the same variables the server reads.
        return probe_code(
            f"os.environ.get('{host_var}', '0.0.0.0')",
            f"os.environ.get('{port_var}', '{self.container_port}')",
            self.health_path,
        )


def probe_code(host: str, port: str, path: str, prelude: str = "") -> str:
    """Python code (one line) that fails unless ``GET http://host:port/path`` answers 2xx.

    Args:
        host: an expression giving the address the server binds (0.0.0.0 probes 127.0.0.1).
        port: an expression giving its port.
        path: the readiness route.
        prelude: statements run first (they may define what ``host`` and ``port`` use).
    """
    return (
        f"import os, urllib.request as r; {prelude}"
        f"h = {host}; "
        "h = {'0.0.0.0': '127.0.0.1', '': '127.0.0.1', '::': '::1'}.get(h, h); "
        "h = '[' + h + ']' if ':' in h else h; "
        f"r.urlopen('http://%s:%s{path}' % (h, {port}), timeout=2)"
    )


#: The recipe of the onnx-docker target's images.
ONNX_SERVING = OnnxServingRecipe()


@dataclass(frozen=True)
class MlserverRecipe:
    """MLServer + this package's MLServer runtime (``mlserver_runtime.OnnxRuntime``) + the
    bundle, started by ``python -m mlflow_deploy_plugins.mlserver_serve``, which reads the
    settings the mlserver target writes into the container's environment (settings.json and
    model-settings.json, generated by the code its local mode uses)."""

    target: str = "mlserver"
    template_version: str = "1"
    runtime_extra: str = "mlserver"
    container_port: int = CONTAINER_PORT
    health_path: str = HEALTH_PATH
    #: What mlserver_serve logs once the model is loaded and the HTTP socket listens.
    ready_line: re.Pattern = re.compile(r"MLServer serving \S+ on http://")
    build_stage: str | None = "build"

    def dockerfile(self, base_image: str, package_wheel: str, labels: Mapping[str, str]) -> str:
        """Render the Dockerfile (see :func:`render_dockerfile`)."""
        # The probe reads where MLServer listens from the settings MLServer reads.
        healthcheck = probe_code(
            "s['host']",
            "s['http_port']",
            self.health_path,
            prelude=f"import json; s = json.loads(os.environ['{MLSERVER_SETTINGS_ENV}']); ",
        )
        return render_dockerfile(
            self,
            base_image,
            package_wheel,
            labels,
            environment={},
            healthcheck=healthcheck,
            entrypoint=["python", "-m", f"{PACKAGE}.mlserver_serve"],
        )

    def labels(self, resolved: _deployments.ResolvedModel, base_image: str) -> dict[str, str]:
        """OCI and lineage labels of an MLServer image (see :func:`lineage_labels`)."""
        description = (
            f"MLServer image of {resolved.served_name} v{resolved.served_version} "
            f"(ONNX, sha256 {resolved.sha256})"
        )
        return lineage_labels(resolved, base_image, self.target, description)


#: The recipe of the mlserver target's images (``-C mode=docker``).
MLSERVER = MlserverRecipe()


def for_config(recipe, cfg):
    """``recipe`` with the extras a target's config asks for: grpcio when ``grpc_port`` is set
    (the lean image carries it only then). Every target that builds calls this."""
    return with_extra(recipe, "grpc") if getattr(cfg, "grpc_port", None) else recipe


def with_extra(recipe, extra: str):
    """``recipe`` whose image also installs this package's ``extra`` (e.g. ``grpc``)."""
    import dataclasses

    return dataclasses.replace(recipe, runtime_extra=f"{recipe.runtime_extra},{extra}")
