"""The ``onnx-docker`` deployment target: a lean image (ONNX model + serving runtime) run as a
hardened container, with health-gated, zero-downtime updates in host network mode."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from mlflow.deployments import BaseDeploymentClient

from mlflow_deploy_plugins.core import config
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.serving.settings import LOG_LEVELS

# Shared parts are imported as modules: MLflow's plugin loader counts every BaseDeploymentClient
# subclass visible here and must find exactly one.
from mlflow_deploy_plugins.targets import _client, _config, _container, _docker_target
from mlflow_deploy_plugins.targets._config import TargetConfig, option
from mlflow_deploy_plugins.targets._images import recipes

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

    port: int = option(8080, "Host port the endpoint answers on.", check=_container.HOST_PORT)
    host: str = option(
        "127.0.0.1",
        "Address the server binds in host network mode, or the address the port is published "
        "on in bridge mode; 0.0.0.0 answers on every interface.",
    )
    network_mode: str = _container.network_mode_option()
    base_image: str = _config.base_image_option()
    user: str = _container.user_option(recipes.DEFAULT_USER)
    grpc_port: int | None = option(
        None,
        "Also serve the Open Inference Protocol over gRPC on this host port (the image then "
        "carries grpcio); off by default.",
        check=_container.HOST_PORT,
    )
    workers: int = option(
        1,
        "Server processes sharing the port; one per core scales best.",
        check=_container.runtime_setting("workers"),
    )
    max_batch_size: int | None = option(
        None,
        "Most rows run in one onnxruntime call (runtime default 64).",
        check=_container.runtime_setting("max_batch_size"),
    )
    max_batch_time_ms: float | None = option(
        None,
        "Longest wait to fill a batch in ms (runtime default 0: adaptive).",
        check=_container.runtime_setting("max_batch_time_ms"),
    )
    log_level: str = option(
        "INFO",
        "Log level of the server.",
        choices=LOG_LEVELS,
        check=_container.runtime_setting("log_level"),
    )
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
        None,
        "Fraction of requests written to the payload log (runtime default 1.0).",
        check=_container.runtime_setting("payload_log_sample_rate"),
    )
    max_connections: int | None = option(
        None,
        "Open connections per server process; beyond it the oldest idle one is closed, or 503 "
        "when all are busy (runtime default 2048).",
        check=_container.runtime_setting("max_connections"),
    )
    max_body_bytes: int | None = option(
        None,
        "Largest request body; larger gets 413 (runtime default 8 MiB).",
        check=_container.runtime_setting("max_body_bytes"),
    )
    max_inflight_body_bytes: int | None = option(
        None,
        "Request body bytes being received at once per server process; beyond: 503 with "
        "Retry-After before the body is read (runtime default 128 MiB).",
        check=_container.runtime_setting("max_inflight_body_bytes"),
    )
    max_header_count: int | None = option(
        None,
        "Most header lines per request; more gets 431 (runtime default 100).",
        check=_container.runtime_setting("max_header_count"),
    )
    first_request_timeout_s: float | None = option(
        None,
        "Seconds a new connection may stay silent before it is closed (runtime default 10).",
        check=_container.runtime_setting("first_request_timeout_s"),
    )
    offload_rows: int | None = option(
        None,
        "Requests with this many rows run off the event loop (runtime default 4096).",
        check=_container.runtime_setting("offload_rows"),
    )
    replicas: int | None = option(
        None,
        "Run a Docker Swarm service of N replicas (the engine must be a swarm manager) instead "
        "of one container: every replica binds host:port (SO_REUSEPORT, network_mode=host); "
        "updates are swarm rolling updates (start-first, rolled back on failure).",
        check=config.at_least(1),
    )
    memory: str | None = _container.memory_option()
    cpus: float | None = _container.cpus_option()
    restart_policy: str = _container.restart_policy_option()
    ready_timeout: float = option(
        60.0,
        "Seconds create/update wait for the readiness probe before giving up.",
        check=config.positive,
    )
    stop_timeout: float = option(
        30.0,
        "Seconds a stopping server gets to finish in-flight requests and flush the payload log "
        "before it is killed.",
        check=config.positive,
    )
    python_version: str | None = _config.python_version_option()
    platform: str | None = _config.platform_option()
    wheel_cache: str | None = _config.wheel_cache_option()
    image_repository: str | None = _config.image_repository_option()
    rebuild: bool = _config.rebuild_option()
    remove_image: bool = _config.remove_image_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.replicas and self.network_mode != "host":
            raise InvalidInputError(
                "Config key 'replicas' of target 'onnx-docker' needs network_mode=host: every "
                "replica binds host:port itself (SO_REUSEPORT); swarm's ingress publishing is "
                "not used"
            )

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


class OnnxDockerDeploymentClient(_client.DelegatingClient, BaseDeploymentClient):
    """Deployments of ONNX serving containers on a Docker engine (the work is done by
    ``_docker_target.DockerTarget``, whose docstrings say what each call guarantees).

    ``progress`` (a callable taking one line) receives build and rollout progress; by default
    it is written to stderr.
    """

    def __init__(self, target_uri: str = TARGET):
        super().__init__(target_uri)
        _, _, base_url = target_uri.partition(":/")
        self.base_url = base_url or None
        self.progress = _client.stderr_progress
        self.deployments = _docker_target.DockerTarget(
            TARGET,
            FLAVOR,
            OnnxDockerConfig,
            RECIPE,
            # read at each call: callers replace ``progress`` after construction
            progress=lambda line: self.progress(line),
            base_url=self.base_url,
            container_prefix=CONTAINER_PREFIX,
        )
