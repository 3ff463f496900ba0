"""The ``onnx-docker`` deployment target: a lean image (ONNX model + serving runtime) run as a
hardened container, with health-gated, zero-downtime updates in host network mode.

``mlflow deployments create -t onnx-docker --name churn -m models:/churn@champion -C port=8080``.
The truth about deployments lives in Docker (container labels), never in a local file. This
module is the facade MLflow loads: the work is done by the shared modules it imports (as
modules: MLflow's loader must see exactly one ``BaseDeploymentClient`` subclass here).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

from mlflow.deployments import BaseDeploymentClient

from mlflow_deploy_plugins.errors import AlreadyExistsError
from mlflow_deploy_plugins.serving.settings import LOG_LEVELS
from mlflow_deploy_plugins.targets import _container, _deployments, _docker, _predict, _rollout
from mlflow_deploy_plugins.targets._config import TargetConfig, option
from mlflow_deploy_plugins.targets._endpoints import endpoint_url
from mlflow_deploy_plugins.targets._images import builder, recipes

_logger = logging.getLogger(__name__)

TARGET = "onnx-docker"
FLAVOR = "onnx"
CONTAINER_PREFIX = "mlflow-deploy-"
#: The image this target builds (its ``target`` is this target's name).
RECIPE = recipes.ONNX_SERVING
#: -C keys that act on one call and are not remembered on the container.
ACTION_KEYS = ("rebuild", "remove_image")


@dataclass(frozen=True)
class OnnxDockerConfig(TargetConfig):
    """``-C key=value`` settings of the onnx-docker target."""

    target: ClassVar[str] = TARGET

    port: int = option(8080, "Host port the endpoint answers on.")
    host: str = option(
        "127.0.0.1",
        "Address the server binds in host network mode, or the address the port is published "
        "on in bridge mode; 0.0.0.0 answers on every interface.",
    )
    network_mode: str = option(
        "host",
        "host: the server binds host:port directly (zero-downtime updates with SO_REUSEPORT); "
        "bridge: the container port 8080 is published on host:port (short gap on update).",
        choices=("host", "bridge"),
    )
    base_image: str = option(
        "python:3.11-slim", "Image the serving image is built FROM (needs python3 with venv)."
    )
    user: str = option(
        recipes.DEFAULT_USER,
        "UID:GID (numbers) the server runs as; it must be able to read auth_token_file and "
        "write payload_log_dir.",
    )
    workers: int = option(1, "Server processes sharing the port; one per core scales best.")
    max_batch_size: int | None = option(
        None, "Most rows run in one onnxruntime call (runtime default 64)."
    )
    max_batch_time_ms: float | None = option(
        None, "Longest wait to fill a batch in ms (runtime default 0: adaptive)."
    )
    log_level: str = option("INFO", "Log level of the server.", choices=LOG_LEVELS)
    auth_token_file: str | None = option(
        None,
        "Host file holding a bearer token; mounted read-only into the container as a file "
        "(never an environment variable) and required on every route but health checks.",
    )
    payload_log_dir: str | None = option(
        None,
        "Host directory for the sampled request/response log (drift monitoring), mounted "
        "read-write; created when missing.",
    )
    payload_log_sample_rate: float | None = option(
        None, "Fraction of requests written to the payload log (runtime default 1.0)."
    )
    memory: str | None = option(None, "Memory limit of the container, e.g. 512m or 2g.")
    cpus: float | None = option(None, "CPU limit of the container in cores, e.g. 1.5.")
    restart_policy: str = option(
        "unless-stopped",
        "Docker restart policy of the container.",
        choices=("no", "on-failure", "unless-stopped", "always"),
    )
    ready_timeout: float = option(
        60.0, "Seconds create/update wait for the readiness probe before giving up."
    )
    stop_timeout: float = option(
        30.0,
        "Seconds a stopping server gets to finish in-flight requests and flush the payload log "
        "before it is killed.",
    )
    python_version: str | None = option(
        None, "Python version of the base image the wheels are for (e.g. 3.11); default: probed."
    )
    platform: str | None = option(
        None, "pip platform tag of the base image (e.g. manylinux_2_28_x86_64); default: probed."
    )
    wheel_cache: str | None = option(
        None, "Host directory caching downloaded wheels; default ~/.cache/mlflow-deploy."
    )
    image_repository: str | None = option(
        None, "Repository of the image (its tag is a content hash); default mlflow-deploy/MODEL."
    )
    rebuild: bool = option(
        False, "Build the image even when one with the same content hash exists."
    )
    remove_image: bool = option(
        False, "delete: also remove the image; update: remove the previous version's image."
    )

    def __post_init__(self) -> None:
        problems = _container.config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def remembered(self) -> dict[str, Any]:
        """What the container label keeps (update starts from it)."""
        return {k: v for k, v in self.to_dict().items() if k not in ACTION_KEYS}


def target_help() -> str:
    """The text of ``mlflow deployments help -t onnx-docker`` (keys from the config class)."""
    return f"""\
The onnx-docker target builds a lean image (the model as ONNX + the serving runtime: onnxruntime,
numpy, an HTTP server; no mlflow, pandas or sklearn) and runs it as a hardened container
(non-root, read-only root filesystem, no capabilities, no-new-privileges, HEALTHCHECK).

Target URI: onnx-docker (the engine from DOCKER_HOST), or onnx-docker:/<docker base URL>,
e.g. onnx-docker:/unix:///var/run/docker.sock.

Model URI: models:/name/version, models:/name@alias, runs:/..., or a local path. A model of
the mlflow_deploy_plugins (ONNX) flavor is deployed as is; any other model is converted through
the parity gate first (nothing is written to the registry).

create blocks until the readiness probe passes, or fails with the container's last log lines
and removes what it started. update starts the new version, waits for its readiness, then stops
the old one gracefully (network_mode=host: both share the port with SO_REUSEPORT, no request
fails); if the new version never becomes ready the old one keeps serving. update without -m
re-resolves the model URI (an alias picks its current version). delete is idempotent.

Config (-C key=value):
{OnnxDockerConfig.help_table()}

Example:
  mlflow deployments create -t onnx-docker --name churn -m models:/churn@champion -C port=8080
  mlflow deployments predict -t onnx-docker --name churn --input-path rows.json
  mlflow deployments update -t onnx-docker --name churn -m models:/churn/4
  mlflow deployments delete -t onnx-docker --name churn -C remove_image=true
"""


def run_local(name, model_uri, flavor=None, config=None):
    """Build the image and run it in the foreground on ``-C port`` until interrupted."""
    OnnxDockerDeploymentClient(TARGET).serve_foreground(name, model_uri, flavor, config)


def _stderr_progress(message: str) -> None:
    _logger.debug("%s", message)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class OnnxDockerDeploymentClient(BaseDeploymentClient):
    """Deployments of ONNX serving containers on a Docker engine.

    ``progress`` (a callable taking one line) receives build and rollout progress; by default
    it is written to stderr.
    """

    def __init__(self, target_uri: str = TARGET):
        super().__init__(target_uri)
        _, _, base_url = target_uri.partition(":/")
        self.base_url = base_url or None
        self.progress = _stderr_progress
        self._client = None

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        """Build the image of ``model_uri`` and run it; blocks until the readiness probe passes.

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS for an existing name; INVALID_PARAMETER_VALUE
                for bad config or a port in use (checked before building);
                RESOURCE_DOES_NOT_EXIST for an unknown model; INTERNAL_ERROR with the
                container's last log lines when it does not become ready (nothing is left).
        """
        _deployments.validate_name(name)
        _deployments.check_flavor(flavor, TARGET)
        cfg = OnnxDockerConfig.from_config(config)
        client = self._docker()
        if _docker.deployment_containers(client, TARGET, name):
            raise AlreadyExistsError(
                f"Deployment '{name}' already exists on {TARGET}: update it "
                "(mlflow deployments update) or delete it first"
            )
        _docker.check_port(client, cfg.host, cfg.port)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri, cfg)
        try:
            container, seconds = self._rollout(name, cfg, resolved, image).create(cfg)
        except BaseException:
            if not image.cached:
                _docker.remove_image(client, image.tag)
            raise
        self.progress(
            f"Deployment '{name}' ready in {seconds:.2f} s at "
            f"{endpoint_url(cfg.host, cfg.port)} ({resolved.lineage()})"
        )
        return self._describe(container)

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        """Roll ``name`` to ``model_uri`` (default: its model URI, re-resolved) and/or new config.

        The new container must pass readiness before the old one is stopped (gracefully:
        in-flight requests finish, the payload log is flushed); if it does not, it is removed,
        the old one keeps serving and the error carries the new container's last log lines.
        In host network mode both share the port (SO_REUSEPORT): no request fails. In bridge
        mode on the same port the new version is first proven on a scratch port; the switch
        then refuses connections for about a second, and rolls back if the new one fails.
        """
        _deployments.check_flavor(flavor, TARGET)
        OnnxDockerConfig.from_config(config)  # bad keys/values fail before Docker is asked
        client = self._docker()
        containers = _docker.deployment_containers(client, TARGET, name)
        old = _docker.current(containers, CONTAINER_PREFIX + name)
        if old is None:
            raise _deployments.DeploymentNotFoundError(f"No deployment named '{name}' on {TARGET}")
        for leftover in containers:  # from an interrupted update
            if leftover.id != old.id:
                _docker.remove(leftover)
        old_cfg = OnnxDockerConfig.from_config(_remembered_config(old))
        cfg = OnnxDockerConfig.from_config({**old_cfg.remembered(), **(config or {})})
        model_uri = model_uri or old.labels[_deployments.LABEL_MODEL_URI]
        plan = _rollout.plan_update(name, old_cfg, cfg, _docker.status(old) == "running")
        if plan.check_port:
            _docker.check_port(client, cfg.host, cfg.port, deployment=name)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri, cfg)
        old_image = old.labels.get(_docker.LABEL_IMAGE)
        self.progress(
            f"Updating '{name}': {old.labels.get(_deployments.LABEL_SERVED_NAME)} "
            f"v{old.labels.get(_deployments.LABEL_SERVED_VERSION)} -> {resolved.lineage()}"
        )
        rollout = self._rollout(name, cfg, resolved, image)
        try:
            new = rollout.replace(old, old_cfg, cfg, plan)
        except BaseException:
            if not image.cached and image.tag != old_image:
                _docker.remove_image(client, image.tag)
            raise
        rollout.retire(old, old_cfg)
        rollout.settle(new)
        if cfg.remove_image and old_image and old_image != image.tag:
            _docker.remove_image(client, old_image)
        self.progress(f"Deployment '{name}' now serves {resolved.lineage()}")
        return self._describe(new)

    def delete_deployment(self, name, config=None, endpoint=None):
        """Stop (gracefully) and remove the container(s) of ``name``; no error when absent.
        ``-C remove_image=true`` also removes the image."""
        cfg = OnnxDockerConfig.from_config(config)
        client = self._docker()
        images = set()
        for container in _docker.deployment_containers(client, TARGET, name):
            images.add(container.labels.get(_docker.LABEL_IMAGE) or container.attrs.get("Image"))
            timeout = cfg.stop_timeout if "stop_timeout" in (config or {}) else None
            remembered = _remembered_config(container).get("stop_timeout", cfg.stop_timeout)
            _docker.stop(container, timeout or remembered)
            _docker.remove(container)
            self.progress(f"Deployment '{name}': container {container.name} removed")
        if cfg.remove_image:
            for image in filter(None, images):
                if _docker.remove_image(client, image):
                    self.progress(f"Deployment '{name}': image {image} removed")

    def list_deployments(self, endpoint=None):
        """Every onnx-docker deployment on the engine, read from container labels."""
        groups: dict[str, list] = {}
        for container in _docker.deployment_containers(self._docker(), TARGET):
            groups.setdefault(container.labels[_deployments.LABEL_DEPLOYMENT], []).append(container)
        return [
            self._describe(_docker.current(found, CONTAINER_PREFIX + name))
            for name, found in sorted(groups.items())
        ]

    def get_deployment(self, name, endpoint=None):
        """The deployment ``name`` as ``list_deployments`` describes it.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when there is none.
        """
        containers = _docker.deployment_containers(self._docker(), TARGET, name)
        container = _docker.current(containers, CONTAINER_PREFIX + name)
        if container is None:
            raise _deployments.DeploymentNotFoundError(f"No deployment named '{name}' on {TARGET}")
        return self._describe(container)

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """Score ``inputs`` (a DataFrame, a dict in MLflow's or the V2 protocol's JSON format, a
        list of records or a numpy array) on the deployment; returns ``{"predictions": ...}``
        for MLflow inputs, the V2 response for V2 inputs."""
        info = self.get_deployment(deployment_name)
        if info["status"] != "running":
            raise _deployments.DeploymentError(
                f"Deployment '{deployment_name}' is {info['status']}, not running"
            )
        return _predict.predict(
            deployment_name,
            info["endpoint_url"],
            inputs,
            served_model=info["served_model"],
            auth_token_file=info["config"].get("auth_token_file"),
        )

    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: build, run, stream the server's log until Ctrl+C, then remove."""
        _deployments.validate_name(name)
        _deployments.check_flavor(flavor, TARGET)
        cfg = OnnxDockerConfig.from_config({"restart_policy": "no", **(config or {})})
        _docker.check_port(self._docker(), cfg.host, cfg.port)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri, cfg)
        local_name = f"{CONTAINER_PREFIX}local-{name}-{uuid.uuid4().hex[:6]}"
        rollout = self._rollout(name, cfg, resolved, image, local=True)
        container = None
        try:
            container, _ = rollout.create(cfg, container_name=local_name, what=f"'{name}'")
            self.progress(
                f"Serving '{name}' ({resolved.lineage()}) at "
                f"{endpoint_url(cfg.host, cfg.port)}; Ctrl+C stops it"
            )
            for chunk in container.logs(stream=True, follow=True, since=int(time.time())):
                sys.stderr.write(chunk.decode(errors="replace"))
            container.reload()
            code = container.attrs["State"].get("ExitCode")
            if code:
                raise _deployments.DeploymentError(
                    f"'{name}' exited with code {code}", logs=_docker.tail(container)
                )
        except KeyboardInterrupt:
            self.progress(f"Stopping '{name}'")
        finally:
            if container is not None:
                _docker.stop(container, cfg.stop_timeout)
                _docker.remove(container)

    def _docker(self):
        if self._client is None:
            self._client = _docker.connect(self.base_url, TARGET)
        return self._client

    def _build(self, model_uri: str, cfg: OnnxDockerConfig):
        """The model's bundle (in a scratch directory: it only has to outlive the build) and
        its image."""
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
            return resolved, self._image(resolved, cfg)

    def _image(self, resolved: _deployments.ResolvedModel, cfg: OnnxDockerConfig):
        return builder.ensure_image(
            self._docker(),
            resolved,
            recipe=RECIPE,
            base_image=cfg.base_image,
            repository=cfg.image_repository,
            python_version=cfg.python_version,
            platform=cfg.platform,
            cache_dir=cfg.wheel_cache,
            rebuild=cfg.rebuild,
            progress=self.progress,
        )

    def _rollout(self, name, cfg, resolved, image, local=False) -> _rollout.ContainerRollout:
        """The rollout of ``name``; its containers run ``image`` with ``cfg``."""

        def start(container_name: str, port: int, takeover: int | None):
            labels = {
                _deployments.LABEL_TARGET: TARGET,
                **resolved.labels(),
                _deployments.LABEL_PORT: str(port),
                _deployments.LABEL_HOST: cfg.host,
                _docker.LABEL_NETWORK_MODE: cfg.network_mode,
                _docker.LABEL_IMAGE: image.tag,
                _deployments.LABEL_CONFIG: json.dumps(cfg.remembered(), sort_keys=True),
                _deployments.LABEL_CREATED: datetime.now(timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            }
            labels[_docker.LABEL_RUN_LOCAL if local else _deployments.LABEL_DEPLOYMENT] = name
            port_inside = RECIPE.container_port
            env = _container.serving_environment(
                cfg, port, container_port=port_inside, takeover=takeover
            )
            options = _container.container_options(cfg, port, env, container_port=port_inside)
            return _docker.run_container(self._docker(), image.tag, container_name, labels, options)

        return _rollout.ContainerRollout(
            name, CONTAINER_PREFIX + name, start, RECIPE, self.progress
        )

    def _describe(self, container) -> dict:
        labels = container.labels
        state = container.attrs.get("State", {})
        host = labels.get(_deployments.LABEL_HOST, "127.0.0.1")
        port = int(labels.get(_deployments.LABEL_PORT, 0))
        return {
            "name": labels.get(_deployments.LABEL_DEPLOYMENT),
            "flavor": FLAVOR,
            "target": TARGET,
            "status": state.get("Status", container.status),
            "health": (state.get("Health") or {}).get("Status"),
            "endpoint_url": endpoint_url(host, port),
            **_deployments.describe_lineage(labels),
            "image": labels.get(_docker.LABEL_IMAGE),
            "image_id": container.attrs.get("Image"),
            "container": container.name,
            "container_id": container.id[:12],
            "network_mode": labels.get(_docker.LABEL_NETWORK_MODE),
            "host": host,
            "port": port,
            "created_at": labels.get(_deployments.LABEL_CREATED),
            "config": _remembered_config(container),
        }


def _remembered_config(container) -> dict[str, Any]:
    """The ``-C`` settings a container was started with (its config label)."""
    return json.loads(container.labels.get(_deployments.LABEL_CONFIG, "{}"))
