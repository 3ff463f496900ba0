"""The ``mlserver`` deployment target: our ONNX serving bundles as models of a real MLServer,
served by ``mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime`` (onnxruntime, our V2 codecs).

``-C mode=local``: an MLServer process we start and supervise on 127.0.0.1 with a model repository
we manage; ``-C mode=remote``: an existing MLServer whose repository directory we can write.
Deployments are models in the repository, loaded and unloaded through MLServer's repository API,
so several share one server. MLServer is an optional extra: this module imports without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from mlflow.deployments import BaseDeploymentClient

from mlflow_deploy_plugins.core import config

# Shared parts are imported as modules: MLflow's plugin loader counts every BaseDeploymentClient
# subclass visible here and must find exactly one.
from mlflow_deploy_plugins.targets import (
    _client,
    _config,
    _container,
    _docker_target,
    _mlserver_docker,
    _mlserver_target,
)
from mlflow_deploy_plugins.targets._config import TargetConfig, option
from mlflow_deploy_plugins.targets._images import recipes

_logger = logging.getLogger(__name__)

TARGET = "mlserver"
FLAVOR = "onnx"
MODES = ("local", "remote", "docker")
#: The image of ``-C mode=docker`` (its ``target`` is this target's name).
RECIPE = recipes.MLSERVER
#: Names of docker-mode containers: this prefix + the deployment's name.
CONTAINER_PREFIX = "mlflow-mlserver-"
#: -C keys that act on one call and are not remembered.
ACTION_KEYS = ("rebuild", "remove_image")


@dataclass(frozen=True)
class MlserverConfig(TargetConfig):
    """``-C key=value`` settings of the mlserver target."""

    target: ClassVar[str] = TARGET
    # What the hardened container spec and the rollout read of a container target's config,
    # fixed for MLServer: one HTTP server process (the rollout's takeover counts its sockets),
    # and neither our bearer token nor our payload log (MLServer has its own features).
    workers: ClassVar[int] = 1
    auth_token_file: ClassVar[None] = None
    payload_log_dir: ClassVar[None] = None

    mode: str = option(
        "local",
        "local: an MLServer process started and supervised by this target on host:port; "
        "remote: an existing MLServer at url whose model repository (the target URI's "
        "directory) is writable here; docker: an image with MLServer, the runtime and the "
        "model, run as a hardened container (one per deployment).",
        choices=MODES,
    )
    url: str | None = option(
        None, "remote: the MLServer's HTTP address, e.g. http://127.0.0.1:8080 (required)."
    )
    host: str = option(
        "127.0.0.1",
        "local, docker: the address the server binds (docker bridge mode: where the port is "
        "published).",
    )
    port: int = option(
        8080, "local, docker: the HTTP port of the server.", check=_container.HOST_PORT
    )
    grpc_port: int | None = option(
        None, "local, docker: the gRPC port (default port+1).", check=_container.HOST_PORT
    )
    metrics_port: int | None = option(
        None, "local, docker: the metrics port (default port+2).", check=_container.HOST_PORT
    )
    metrics: bool = option(
        False, "local, docker: serve Prometheus metrics on metrics_port (costs throughput)."
    )
    parallel_workers: int = option(
        0,
        "local, docker: MLServer inference worker processes; 0 runs models in the server "
        "process (measured faster on one core, 200 MiB less, 1.7 s quicker start).",
        check=config.at_least(0),
    )
    debug: bool = option(False, "local, docker: MLServer's debug mode (access log; slower).")
    max_batch_size: int = option(
        0,
        "Adaptive batching: most requests merged into one model call (0 or 1: off).",
        check=config.at_least(0),
    )
    max_batch_time: float = option(
        0.0,
        "Adaptive batching: longest wait in seconds to fill a batch.",
        check=config.at_least(0),
    )
    intra_op_threads: int = option(
        1, "onnxruntime threads per model call.", check=config.at_least(1)
    )
    ready_timeout: float = option(
        120.0,
        "Seconds to wait for the server to start (10-14 s is usual) and for a model to load.",
        check=config.positive,
    )
    stop_timeout: float = option(
        30.0,
        "local, docker: seconds a stopping server gets before it is killed.",
        check=config.positive,
    )
    # docker mode: the image (built like onnx-docker's, another recipe) and its container
    network_mode: str = _container.network_mode_option()
    base_image: str = _config.base_image_option()
    user: str = _container.user_option(recipes.DEFAULT_USER)
    memory: str | None = _container.memory_option()
    cpus: float | None = _container.cpus_option()
    restart_policy: str = _container.restart_policy_option()
    python_version: str | None = _config.python_version_option()
    platform: str | None = _config.platform_option()
    wheel_cache: str | None = _config.wheel_cache_option()
    image_repository: str | None = _config.image_repository_option()
    rebuild: bool = _config.rebuild_option()
    remove_image: bool = _config.remove_image_option()

    def remembered(self) -> dict[str, Any]:
        """What the deployment record or container label keeps (update starts from it)."""
        return {k: v for k, v in self.to_dict().items() if k not in ACTION_KEYS}


def target_help() -> str:
    """The text of ``mlflow deployments help -t mlserver`` (keys from the config class)."""
    return f"""\
The mlserver target serves models as ONNX inside a real MLServer (Open Inference Protocol V2,
several models per server, adaptive batching), with this package's MLServer runtime
(mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime: onnxruntime and the same request decoding
as the onnx-docker runtime). Needs: pip install 'mlflow-deploy-plugins[mlserver]'.

Target URI: mlserver (the model repository ~/.mlflow-deploy/mlserver, or
$MLFLOW_DEPLOY_MLSERVER_REPOSITORY), or mlserver:/<repository directory>, e.g.
mlserver:/srv/mlserver-models. The repository is where deployments live (one directory each);
every command (create, get, list, predict, delete) finds them there.

Modes (-C mode=, given on create; later calls find the deployment in the repository, or as a
docker-mode container on the engine of DOCKER_HOST):
  local   an MLServer process this target starts on host:port (detached; found again by
          later calls; stopped when its last deployment is deleted) with a model repository
          directory it manages. Deployments are models in that repository: several share
          one server.
  remote  an existing MLServer at -C url=, whose model repository directory (the target
          URI's) is writable from here; models are written there and loaded through the server's
          repository API. The server needs this package installed (the runtime).
  docker  an image with MLServer, the runtime and the model (built like onnx-docker's: the
          same builder, wheels downloaded on the host, no network in the build), run as a
          hardened container per deployment (non-root, read-only root, no capabilities,
          limits, HEALTHCHECK) on host:port (gRPC on port+1). MLServer's settings come from
          the same keys as in local mode. Needs the docker extra and MLServer on this host
          (the image pins the host's versions).

Model URI: models:/name/version, models:/name@alias, runs:/..., or a local path. A model of
the mlflow_deploy_plugins (ONNX) flavor is deployed as is; any other model is converted through
the parity gate first (nothing is written to the registry).

Endpoints of a deployment NAME: POST /v2/models/NAME/infer (V2), POST
/v2/models/NAME/invocations (MLflow's scoring protocol), GET /v2/models/NAME/ready.

create blocks until MLServer has loaded the model; if it fails to load, MLServer's error is
reported, the model is unloaded and the repository is left as it was. update writes the new
version and reloads it: the old one answers until the new one is loaded, and stays if the new
one fails. delete unloads and removes the model (idempotent).
mode=docker: update starts the new version's container beside the old one; it loads its model
before it listens, then joins the port (network_mode=host, SO_REUSEPORT) and takes every new
connection; the old container then stops gracefully: no request fails. If the new one does not
load, its log (MLServer's error) is reported and the old one keeps serving. delete stops and
removes the container (-C remove_image=true: its image too).

Config (-C key=value):
{MlserverConfig.help_table()}

Example:
  mlflow deployments create -t mlserver --name churn -m models:/churn@champion -C port=8080
  mlflow deployments predict -t mlserver --name churn --input-path rows.json
  mlflow deployments update -t mlserver --name churn -m models:/churn/4
  mlflow deployments delete -t mlserver --name churn
  mlflow deployments create -t mlserver --name churn-d -m models:/churn@champion \\
      -C mode=docker -C port=8090
"""


def run_local(name, model_uri, flavor=None, config=None):
    """Serve ``model_uri`` in a foreground MLServer on ``-C port`` until interrupted."""
    MlserverDeploymentClient(TARGET).serve_foreground(name, model_uri, flavor, config)


class MlserverDeploymentClient(_client.DelegatingClient, BaseDeploymentClient):
    """Deployments as models of an MLServer (the work is done by
    ``_mlserver_target.MlserverTarget`` in modes local and remote, by
    ``_docker_target.DockerTarget`` with the MLServer image recipe in mode docker; their
    docstrings say what each call guarantees).

    ``progress`` (a callable taking one line) receives progress; by default it goes to stderr.
    """

    def __init__(self, target_uri: str = TARGET):
        super().__init__(target_uri)
        _, _, repository = target_uri.partition(":")
        self.progress = _client.stderr_progress

        def progress(line: str) -> None:
            # read at each call: callers replace ``progress`` after construction
            self.progress(line)

        self.deployments = _mlserver_docker.MlserverDeployments(
            TARGET,
            MlserverConfig,
            repository=_mlserver_target.MlserverTarget(
                TARGET,
                FLAVOR,
                MlserverConfig,
                _mlserver_target.repository_path(repository or None),
                progress=progress,
            ),
            # the engine from DOCKER_HOST (the target URI names the repository)
            containers=_docker_target.DockerTarget(
                TARGET,
                FLAVOR,
                MlserverConfig,
                RECIPE,
                progress=progress,
                container_prefix=CONTAINER_PREFIX,
                environment=_mlserver_docker.mlserver_environment,
                model_named_after_deployment=True,
            ),
        )
