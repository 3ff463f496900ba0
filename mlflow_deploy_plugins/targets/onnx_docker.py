"""The ``onnx-docker`` deployment target: a lean image (ONNX model + serving runtime) run as a
hardened container, with health-gated, zero-downtime updates in host network mode.

``mlflow deployments create -t onnx-docker --name churn -m models:/churn@champion -C port=8080``.
The truth about deployments lives in Docker (container labels), never in a local file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.serving.settings import LOG_LEVELS
from mlflow_deploy_plugins.targets import _deployments as D
from mlflow_deploy_plugins.targets import _images
from mlflow_deploy_plugins.targets._config import TargetConfig, option

_logger = logging.getLogger(__name__)

TARGET = "onnx-docker"
FLAVOR = "onnx"
ACCEPTED_FLAVORS = (None, "onnx", "mlflow_deploy_plugins", "python_function")
CONTAINER_PREFIX = "mlflow-deploy-"
LABEL_IMAGE = D.LABEL_PREFIX + "image"
LABEL_NETWORK_MODE = D.LABEL_PREFIX + "network_mode"
LABEL_RUN_LOCAL = D.LABEL_PREFIX + "run_local"
TOKEN_PATH = "/run/secrets/mlflow-deploy-token"
PAYLOAD_LOG_PATH = "/var/lib/mlflow-deploy/payload-log"
#: What serving/server.py logs once its socket listens and the model is warm. In host network
#: mode during an update two servers share the port, so an HTTP probe cannot tell which one
#: answered: this line, read from one container's own log, can.
READY_LINE = re.compile(r'"msg":"Serving .* on http://')
_MEMORY = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)
_USER = re.compile(r"^\d+:\d+$")
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
        _images.DEFAULT_USER,
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
        problems = []
        if not 1 <= self.port <= 65535:
            problems.append(f"port must be between 1 and 65535, got {self.port}")
        if not _USER.match(self.user):
            problems.append(
                f"user must be UID:GID in numbers (e.g. 10001:10001), got {self.user!r}"
            )
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            problems.append(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.memory is not None and not _MEMORY.match(self.memory):
            problems.append(f"memory must be a size like 512m or 2g, got {self.memory!r}")
        if self.cpus is not None and self.cpus <= 0:
            problems.append(f"cpus must be > 0, got {self.cpus}")
        rate = self.payload_log_sample_rate
        if rate is not None and not 0 <= rate <= 1:
            problems.append(f"payload_log_sample_rate must be between 0 and 1, got {rate}")
        for key in ("ready_timeout", "stop_timeout"):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be > 0, got {getattr(self, key)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, gid = self.user.split(":")
        return int(uid), int(gid)

    def remembered(self) -> dict[str, Any]:
        """What the container label keeps (update starts from it)."""
        return {k: v for k, v in self.to_dict().items() if k not in ACTION_KEYS}


def target_help() -> str:
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

    # ------------------------------------------------------------------ the contract
    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        """Build the image of ``model_uri`` and run it; blocks until the readiness probe passes.

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS for an existing name; INVALID_PARAMETER_VALUE
                for bad config or a port in use (checked before building);
                RESOURCE_DOES_NOT_EXIST for an unknown model; INTERNAL_ERROR with the
                container's last log lines when it does not become ready (nothing is left).
        """
        D.validate_name(name)
        _check_flavor(flavor)
        cfg = OnnxDockerConfig.from_config(config)
        client = self._docker()
        if self._containers(name):
            raise AlreadyExistsError(
                f"Deployment '{name}' already exists on {TARGET}: update it "
                "(mlflow deployments update) or delete it first"
            )
        self._check_port(cfg)
        _prepare_host_paths(cfg)
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = D.resolve_model(model_uri, os.path.join(work, "bundle"))
            image = self._image(resolved, cfg)
        container = None
        try:
            container = self._start(_container_name(name), name, cfg, resolved, image)
            seconds = self._wait_ready(container, cfg, cfg.port, f"Deployment '{name}'")
        except BaseException:
            _remove(container)
            if not image.cached:
                _images.remove_image(client, image.tag)
            raise
        self.progress(
            f"Deployment '{name}' ready in {seconds:.2f} s at "
            f"{D.endpoint_url(cfg.host, cfg.port)} ({_lineage(resolved)})"
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
        _check_flavor(flavor)
        OnnxDockerConfig.from_config(config)  # bad keys/values fail before Docker is asked
        client = self._docker()
        containers = self._containers(name)
        old = _current(containers, name)
        if old is None:
            raise D.DeploymentNotFoundError(f"No deployment named '{name}' on {TARGET}")
        for leftover in containers:  # from an interrupted update
            if leftover.id != old.id:
                _remove(leftover)
        old_cfg = OnnxDockerConfig.from_config(json.loads(old.labels.get(D.LABEL_CONFIG, "{}")))
        cfg = OnnxDockerConfig.from_config({**old_cfg.remembered(), **(config or {})})
        model_uri = model_uri or old.labels[D.LABEL_MODEL_URI]
        same_port = (cfg.port, cfg.host, cfg.network_mode) == (
            old_cfg.port,
            old_cfg.host,
            old_cfg.network_mode,
        )
        old_running = _status(old) == "running"
        if old_running and cfg.port == old_cfg.port and not same_port:
            raise InvalidInputError(
                f"Changing host or network_mode of '{name}' while keeping port {cfg.port} is not "
                "possible without a gap: change the port too, or delete and create it again"
            )
        if not (same_port and old_running):
            self._check_port(cfg, deployment=name)
        elif cfg.network_mode == "host" and cfg.user != old_cfg.user:
            raise InvalidInputError(
                f"Changing user ({old_cfg.user} -> {cfg.user}) on the same port is not possible "
                "in host network mode: SO_REUSEPORT only shares a port between processes of the "
                "same user. Change the port too, or delete and create the deployment."
            )
        _prepare_host_paths(cfg)
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = D.resolve_model(model_uri, os.path.join(work, "bundle"))
            image = self._image(resolved, cfg)
        old_image = old.labels.get(LABEL_IMAGE)
        self.progress(
            f"Updating '{name}': {old.labels.get(D.LABEL_SERVED_NAME)} "
            f"v{old.labels.get(D.LABEL_SERVED_VERSION)} -> {_lineage(resolved)}"
        )
        try:
            if cfg.network_mode == "bridge" and same_port and old_running:
                new = self._swap_bridge(name, old, old_cfg, cfg, resolved, image)
            else:
                # Host mode, same port: the new server joins the old one's SO_REUSEPORT group
                # and takes every new connection; the old one finishes its own, then stops.
                takeover = None
                if same_port and old_running and old_cfg.workers >= cfg.workers:
                    takeover = old_cfg.workers
                new = self._start_next(
                    name, cfg, resolved, image, cfg.port, f"New version of '{name}'", takeover
                )
        except BaseException:
            if not image.cached and image.tag != old_image:
                _images.remove_image(client, image.tag)
            raise
        self._retire(old, old_cfg)
        new.rename(_container_name(name))
        new.reload()
        if cfg.remove_image and old_image and old_image != image.tag:
            _images.remove_image(client, old_image)
        self.progress(f"Deployment '{name}' now serves {_lineage(resolved)}")
        return self._describe(new)

    def delete_deployment(self, name, config=None, endpoint=None):
        """Stop (gracefully) and remove the container(s) of ``name``; no error when absent.
        ``-C remove_image=true`` also removes the image."""
        cfg = OnnxDockerConfig.from_config(config)
        client = self._docker()
        images = set()
        for container in self._containers(name):
            images.add(container.labels.get(LABEL_IMAGE) or container.attrs.get("Image"))
            remembered = json.loads(container.labels.get(D.LABEL_CONFIG, "{}"))
            timeout = cfg.stop_timeout if "stop_timeout" in (config or {}) else None
            _stop(container, timeout or remembered.get("stop_timeout", cfg.stop_timeout))
            _remove(container)
            self.progress(f"Deployment '{name}': container {container.name} removed")
        if cfg.remove_image:
            for image in filter(None, images):
                if _images.remove_image(client, image):
                    self.progress(f"Deployment '{name}': image {image} removed")

    def list_deployments(self, endpoint=None):
        """Every onnx-docker deployment on the engine, read from container labels."""
        self._docker()
        groups: dict[str, list] = {}
        for container in self._containers(None):
            groups.setdefault(container.labels[D.LABEL_DEPLOYMENT], []).append(container)
        return [self._describe(_current(found, name)) for name, found in sorted(groups.items())]

    def get_deployment(self, name, endpoint=None):
        self._docker()
        container = _current(self._containers(name), name)
        if container is None:
            raise D.DeploymentNotFoundError(f"No deployment named '{name}' on {TARGET}")
        return self._describe(container)

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """Score ``inputs`` (a DataFrame, a dict in MLflow's or the V2 protocol's JSON format, a
        list of records or a numpy array) on the deployment; returns ``{"predictions": ...}``
        for MLflow inputs, the V2 response for V2 inputs."""
        info = self.get_deployment(deployment_name)
        if info["status"] != "running":
            raise D.DeploymentError(
                f"Deployment '{deployment_name}' is {info['status']}, not running"
            )
        path, body = _request_body(inputs, info["served_model"])
        headers = {"Content-Type": "application/json"}
        token_file = info["config"].get("auth_token_file")
        if token_file:
            headers["Authorization"] = "Bearer " + _read_token(token_file)
        request = urllib.request.Request(info["endpoint_url"] + path, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")[:2000]
            error = InvalidInputError if 400 <= e.code < 500 else D.DeploymentError
            raise error(f"Deployment '{deployment_name}' answered {e.code}: {text}") from e
        except (urllib.error.URLError, OSError) as e:
            raise D.DeploymentError(
                f"Deployment '{deployment_name}' at {info['endpoint_url']} is not reachable: {e}"
            ) from e
        return PredictionsResponse(payload)

    # ------------------------------------------------------------------ run-local
    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: build, run, stream the server's log until Ctrl+C, then remove."""
        D.validate_name(name)
        _check_flavor(flavor)
        cfg = OnnxDockerConfig.from_config({"restart_policy": "no", **(config or {})})
        self._docker()
        self._check_port(cfg)
        _prepare_host_paths(cfg)
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = D.resolve_model(model_uri, os.path.join(work, "bundle"))
            image = self._image(resolved, cfg)
        local_name = f"{CONTAINER_PREFIX}local-{name}-{uuid.uuid4().hex[:6]}"
        container = None
        try:
            container = self._start(local_name, name, cfg, resolved, image, local=True)
            self._wait_ready(container, cfg, cfg.port, f"'{name}'")
            self.progress(
                f"Serving '{name}' ({_lineage(resolved)}) at "
                f"{D.endpoint_url(cfg.host, cfg.port)}; Ctrl+C stops it"
            )
            for chunk in container.logs(stream=True, follow=True, since=int(time.time())):
                sys.stderr.write(chunk.decode(errors="replace"))
            container.reload()
            code = container.attrs["State"].get("ExitCode")
            if code:
                raise D.DeploymentError(f"'{name}' exited with code {code}", logs=_tail(container))
        except KeyboardInterrupt:
            self.progress(f"Stopping '{name}'")
        finally:
            if container is not None:
                _stop(container, cfg.stop_timeout)
                _remove(container)

    # ------------------------------------------------------------------ internals
    def _docker(self):
        if self._client is not None:
            return self._client
        try:
            import docker
        except ImportError as e:
            raise InvalidInputError(
                f"The {TARGET} target needs the docker SDK: "
                "pip install 'mlflow-deploy-plugins[docker]'"
            ) from e
        where = self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        try:
            client = docker.DockerClient(base_url=self.base_url) if self.base_url else None
            client = client or docker.from_env()
            client.ping()
        except docker.errors.DockerException as e:
            raise D.EngineUnavailableError(
                f"Docker is not running or not reachable at {where} ({e}). Start it: "
                "`sudo systemctl start docker` (or `sudo dockerd &` where there is no systemd; "
                "Docker Desktop: start the app), or point DOCKER_HOST at a running engine."
            ) from e
        self._client = client
        return client

    def _containers(self, name: str | None) -> list:
        filters = [f"{D.LABEL_TARGET}={TARGET}", D.LABEL_DEPLOYMENT]
        if name is not None:
            filters[1] = f"{D.LABEL_DEPLOYMENT}={name}"
        return self._docker().containers.list(all=True, filters={"label": filters})

    def _check_port(self, cfg: OnnxDockerConfig, deployment: str | None = None) -> None:
        """Before any build: the port must be free and not claimed by another deployment
        (a stopped one would take it back when restarted)."""
        for container in self._docker().containers.list(
            all=True, filters={"label": [f"{D.LABEL_PORT}={cfg.port}", D.LABEL_TARGET]}
        ):
            owner = container.labels.get(D.LABEL_DEPLOYMENT) or container.labels.get(
                LABEL_RUN_LOCAL
            )
            if deployment is not None and owner == deployment:
                continue
            if _status(container) == "running" or container.labels.get(D.LABEL_DEPLOYMENT):
                raise InvalidInputError(
                    f"Port {cfg.port} is already used by deployment '{owner}' "
                    f"(container {container.name}); choose another with -C port=..."
                )
        if D.port_in_use(cfg.host, cfg.port):
            raise InvalidInputError(
                f"Port {cfg.port} on {cfg.host} is already in use by another program; "
                "choose another with -C port=..."
            )

    def _image(self, resolved: D.ResolvedModel, cfg: OnnxDockerConfig) -> _images.BuiltImage:
        return _images.ensure_image(
            self._docker(),
            resolved,
            base_image=cfg.base_image,
            repository=cfg.image_repository,
            python_version=cfg.python_version,
            platform=cfg.platform,
            cache_dir=cfg.wheel_cache,
            rebuild=cfg.rebuild,
            progress=self.progress,
        )

    def _start(
        self, container_name, name, cfg, resolved, image, port=None, local=False, takeover=None
    ):
        """Create and start one container; nothing is left behind when that fails."""
        import docker.errors

        port = cfg.port if port is None else port
        labels = {
            D.LABEL_TARGET: TARGET,
            **resolved.labels(),
            D.LABEL_PORT: str(port),
            D.LABEL_HOST: cfg.host,
            LABEL_NETWORK_MODE: cfg.network_mode,
            LABEL_IMAGE: image.tag,
            D.LABEL_CONFIG: json.dumps(cfg.remembered(), sort_keys=True),
            D.LABEL_CREATED: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        labels[LABEL_RUN_LOCAL if local else D.LABEL_DEPLOYMENT] = name
        container = None
        try:
            container = self._docker().containers.create(
                image.tag,
                name=container_name,
                labels=labels,
                **container_options(cfg, port, takeover=takeover),
            )
            container.start()
        except docker.errors.APIError as e:
            _remove(container)
            if e.status_code == 409 and "name" in str(e.explanation):
                raise AlreadyExistsError(
                    f"A container named {container_name} already exists"
                ) from e
            raise D.DeploymentError(
                f"Could not start a container for '{name}': {e.explanation or e}"
            ) from e
        return container

    def _start_next(self, name, cfg, resolved, image, port, what, takeover=None):
        """Start a second container of ``name`` and wait for it; removed again on failure."""
        next_name = f"{_container_name(name)}--{uuid.uuid4().hex[:8]}"
        container = None
        try:
            container = self._start(
                next_name, name, cfg, resolved, image, port=port, takeover=takeover
            )
            seconds = self._wait_ready(container, cfg, port, what)
        except BaseException as e:
            _remove(container)
            if isinstance(e, D.DeploymentError):
                raise D.DeploymentError(
                    f"Update of '{name}' failed; the previous version keeps serving. {e.summary}",
                    logs=e.logs,
                ) from e
            raise
        self.progress(f"{what} ready in {seconds:.2f} s ({container.name})")
        return container

    def _retire(self, old, old_cfg: OnnxDockerConfig) -> None:
        _stop(old, old_cfg.stop_timeout)
        _remove(old)
        self.progress(f"Old container {old.name} stopped and removed")

    def _swap_bridge(self, name, old, old_cfg, cfg, resolved, image):
        """Bridge mode, same port: prove the new version on a scratch port, then swap."""
        scratch = self._start_next(
            name, cfg, resolved, image, D.free_port(D.client_host(cfg.host)), "Trial run"
        )
        _stop(scratch, 5)
        _remove(scratch)
        _stop(old, old_cfg.stop_timeout)
        try:
            new = self._start_next(name, cfg, resolved, image, cfg.port, f"New version of '{name}'")
        except BaseException:
            old.start()
            try:
                self._wait_ready(old, old_cfg, old_cfg.port, "Previous version")
            except D.DeploymentError as e:
                _logger.error("Previous version of '%s' did not come back: %s", name, e)
            raise
        return new

    def _wait_ready(self, container, cfg: OnnxDockerConfig, port: int, what: str) -> float:
        """Seconds until ``container`` logged that it serves and ``host:port`` answers ready."""
        url = D.endpoint_url(cfg.host, port) + "/v2/health/ready"
        logged_ready = False

        def check() -> bool:
            nonlocal logged_ready
            container.reload()
            state = container.attrs.get("State", {})
            if (
                state.get("Status") in ("exited", "dead")
                or state.get("Restarting")
                or container.attrs.get("RestartCount")
            ):
                raise D.DeploymentError(
                    f"{what}: the server exited at start (exit code {state.get('ExitCode')})",
                    logs=_tail(container),
                )
            if state.get("Status") != "running":
                return False
            if not logged_ready:  # read the log until the line shows up, not on every poll
                logged_ready = bool(READY_LINE.search(container.logs().decode(errors="replace")))
                if not logged_ready:
                    return False
            return D.http_ready(url)

        try:
            return D.wait_until(check, cfg.ready_timeout, what=what)
        except TimeoutError as e:
            raise D.DeploymentError(str(e), logs=_tail(container)) from e

    def _describe(self, container) -> dict:
        labels = container.labels
        remembered = json.loads(labels.get(D.LABEL_CONFIG, "{}"))
        state = container.attrs.get("State", {})
        host, port = labels.get(D.LABEL_HOST, "127.0.0.1"), int(labels.get(D.LABEL_PORT, 0))
        onnx_model = labels.get(D.LABEL_ONNX_MODEL, "")
        return {
            "name": labels.get(D.LABEL_DEPLOYMENT),
            "flavor": FLAVOR,
            "target": TARGET,
            "status": state.get("Status", container.status),
            "health": (state.get("Health") or {}).get("Status"),
            "endpoint_url": D.endpoint_url(host, port),
            "model_uri": labels.get(D.LABEL_MODEL_URI),
            "source_model": labels.get(D.LABEL_SOURCE_MODEL, ""),
            "source_version": labels.get(D.LABEL_SOURCE_VERSION, ""),
            "source_run": labels.get(D.LABEL_SOURCE_RUN, ""),
            "deployed_model": onnx_model or "(converted at deploy time, not registered)",
            "deployed_version": labels.get(D.LABEL_ONNX_VERSION, ""),
            "served_model": labels.get(D.LABEL_SERVED_NAME, ""),
            "served_version": labels.get(D.LABEL_SERVED_VERSION, ""),
            "sha256": labels.get(D.LABEL_SHA256, ""),
            "image": labels.get(LABEL_IMAGE),
            "image_id": container.attrs.get("Image"),
            "container": container.name,
            "container_id": container.id[:12],
            "network_mode": labels.get(LABEL_NETWORK_MODE),
            "host": host,
            "port": port,
            "created_at": labels.get(D.LABEL_CREATED),
            "config": remembered,
        }


# --- container options -----------------------------------------------------------------------


def container_options(
    cfg: OnnxDockerConfig, port: int, takeover: int | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``containers.create`` for one serving container on ``port``;
    ``takeover``: the worker count of the server it replaces on the same port (host mode)."""
    host_mode = cfg.network_mode == "host"
    env = {
        "MLFLOW_DEPLOY_HOST": cfg.host if host_mode else "0.0.0.0",
        "MLFLOW_DEPLOY_PORT": str(port if host_mode else _images.CONTAINER_PORT),
        "MLFLOW_DEPLOY_WORKERS": str(cfg.workers),
        "MLFLOW_DEPLOY_LOG_LEVEL": cfg.log_level,
        # lets the next version bind the same port during an update (host network mode)
        "MLFLOW_DEPLOY_REUSE_PORT": "true" if host_mode else "false",
    }
    optional = {
        "MLFLOW_DEPLOY_MAX_BATCH_SIZE": cfg.max_batch_size,
        "MLFLOW_DEPLOY_MAX_BATCH_TIME_MS": cfg.max_batch_time_ms,
        "MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE": cfg.payload_log_sample_rate,
    }
    env.update({k: str(v) for k, v in optional.items() if v is not None})
    if host_mode and takeover:
        env["MLFLOW_DEPLOY_REUSE_PORT_TAKEOVER"] = str(takeover)
    volumes = {}
    if cfg.auth_token_file:
        volumes[os.path.abspath(cfg.auth_token_file)] = {"bind": TOKEN_PATH, "mode": "ro"}
        env["MLFLOW_DEPLOY_AUTH_TOKEN_FILE"] = TOKEN_PATH
    if cfg.payload_log_dir:
        volumes[os.path.abspath(cfg.payload_log_dir)] = {"bind": PAYLOAD_LOG_PATH, "mode": "rw"}
        env["MLFLOW_DEPLOY_PAYLOAD_LOG_DIR"] = PAYLOAD_LOG_PATH
    options: dict[str, Any] = {
        "environment": env,
        "user": cfg.user,
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "init": True,  # forwards SIGTERM, reaps the worker processes
        "pids_limit": 512,
        "volumes": volumes,
    }
    if cfg.restart_policy != "no":
        options["restart_policy"] = {"Name": cfg.restart_policy}
        if cfg.restart_policy == "on-failure":
            options["restart_policy"]["MaximumRetryCount"] = 5
    if host_mode:
        options["network_mode"] = "host"
    else:
        options["network_mode"] = "bridge"
        options["ports"] = {f"{_images.CONTAINER_PORT}/tcp": (cfg.host, port)}
    if cfg.memory:
        options["mem_limit"] = cfg.memory
    if cfg.cpus:
        options["nano_cpus"] = int(cfg.cpus * 1e9)
    return options


def _prepare_host_paths(cfg: OnnxDockerConfig) -> None:
    """The token file must be readable and the payload log directory writable by ``user``
    (the container has no capabilities: root inside cannot bypass permissions either)."""
    uid, gid = cfg.uid_gid
    if cfg.auth_token_file:
        path = cfg.auth_token_file
        if not os.path.isfile(path):
            raise InvalidInputError(f"auth_token_file {path!r} is not a file")
        if not _read_token(path):
            raise InvalidInputError(f"auth_token_file {path!r} is empty")
        if not _allows(os.stat(path), uid, gid, 4):
            raise InvalidInputError(
                f"auth_token_file {path!r} is not readable by the container user {cfg.user}: "
                f"chown {cfg.user} it (mode 0400), or set -C user= to its owner"
            )
    if cfg.payload_log_dir:
        path = cfg.payload_log_dir
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(path, uid, gid)
        if not _allows(os.stat(path), uid, gid, 2 | 1):
            raise InvalidInputError(
                f"payload_log_dir {path!r} is not writable by the container user {cfg.user}: "
                f"chown {cfg.user} it, or set -C user= to its owner"
            )


def _allows(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    if st.st_uid == uid:
        mode = st.st_mode >> 6
    elif st.st_gid == gid:
        mode = st.st_mode >> 3
    else:
        mode = st.st_mode
    return mode & bits == bits


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise InvalidInputError(f"auth_token_file {path!r} cannot be read: {e}") from e


# --- helpers ---------------------------------------------------------------------------------


def _check_flavor(flavor) -> None:
    if flavor not in ACCEPTED_FLAVORS:
        raise InvalidInputError(
            f"Flavor {flavor!r} is not deployable by {TARGET}: it serves ONNX (models of other "
            "flavors are converted); leave --flavor out or use 'onnx'"
        )


def _container_name(name: str) -> str:
    return CONTAINER_PREFIX + name


def _current(containers: list, name: str | None):
    """The container that represents a deployment: the one with the canonical name, else the
    newest (an update in progress, or one interrupted before the rename)."""
    if not containers:
        return None
    for container in containers:
        if name is not None and container.name == _container_name(name):
            return container
    return max(containers, key=lambda c: c.attrs.get("Created", ""))


def _status(container) -> str:
    return container.attrs.get("State", {}).get("Status", container.status)


def _lineage(resolved: D.ResolvedModel) -> str:
    deployed = (
        f"{resolved.onnx_model} v{resolved.onnx_version}"
        if resolved.onnx_model
        else "converted at deploy time"
    )
    source = (
        f"source {resolved.source_model} v{resolved.source_version}"
        if resolved.source_model
        else f"source {resolved.model_uri}"
    )
    return f"{resolved.served_name} v{resolved.served_version}: {deployed}, {source}"


def _tail(container, lines: int = 40) -> str:
    if container is None:
        return ""
    try:
        return container.logs(tail=lines).decode(errors="replace").rstrip()
    except Exception as e:  # the container may be gone already; the logs are a courtesy
        return f"(logs unavailable: {e})"


def _stop(container, timeout: float) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        container.stop(timeout=int(max(1, timeout)))


def _remove(container) -> None:
    if container is None:
        return
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if e.status_code != 409:  # 409: removal already in progress
            raise


def _request_body(inputs, served_model: str) -> tuple[str, bytes]:
    """(path, JSON body) for ``inputs``: V2 tensors go to the V2 route, the rest to
    /invocations in MLflow's scoring format."""
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        split = inputs.to_json(orient="split", index=False, date_format="iso")
        return "/invocations", b'{"dataframe_split": ' + split.encode() + b"}"
    if isinstance(inputs, dict):
        tensors = inputs.get("inputs")
        if (
            isinstance(tensors, list)
            and tensors
            and all(isinstance(t, dict) and "datatype" in t for t in tensors)
        ):
            return f"/v2/models/{served_model}/infer", json.dumps(inputs).encode()
        return "/invocations", json.dumps(inputs, default=_jsonable).encode()
    if isinstance(inputs, list):
        if inputs and all(isinstance(r, dict) for r in inputs):
            return "/invocations", json.dumps({"dataframe_records": inputs}).encode()
        return "/invocations", json.dumps({"inputs": inputs}, default=_jsonable).encode()
    if hasattr(inputs, "tolist"):
        return "/invocations", json.dumps({"inputs": inputs.tolist()}).encode()
    raise InvalidInputError(
        f"Cannot send inputs of type {type(inputs).__name__}: pass a pandas DataFrame, a dict "
        "(MLflow scoring or V2 JSON), a list of records or a numpy array"
    )


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
