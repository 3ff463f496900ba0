"""The ``onnx-kubernetes`` deployment target: the onnx-docker image pushed to a registry and run
on Kubernetes as a KServe InferenceService or a Deployment + Service + HPA, hardened, through the
official kubernetes client and the user's kubeconfig."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from mlflow.deployments import BaseDeploymentClient

from mlflow_deploy_plugins.core import config
from mlflow_deploy_plugins.serving.settings import LOG_LEVELS

# Shared parts are imported as modules: MLflow's plugin loader counts every BaseDeploymentClient
# subclass visible here and must find exactly one.
from mlflow_deploy_plugins.targets import _client, _config, _container, _k8s_local, _k8s_target
from mlflow_deploy_plugins.targets._config import TargetConfig, option
from mlflow_deploy_plugins.targets._images import recipes

_logger = logging.getLogger(__name__)

TARGET = "onnx-kubernetes"
FLAVOR = "onnx"
#: The same image as onnx-docker: the runtime answers KServe's V2 routes and health probes.
RECIPE = recipes.ONNX_SERVING
#: -C keys that act on one call and are not remembered on the cluster objects.
ACTION_KEYS = ("dry_run", "output", "rebuild", "canary_traffic_percent", "image", "local_port")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_PDB = re.compile(r"^\d+%?$")


def _quantity(value: str) -> str | None:
    return None if _QUANTITY.match(value) else "must be a Kubernetes quantity like 500m, 1, 512Mi"


def _min_available(value: str) -> str | None:
    return None if _PDB.match(value) else "must be a pod count (2) or a percentage (50%)"


def _digest_ref(value: str) -> str | None:
    return None if "@sha256:" in value else "must be referenced by digest: REPO@sha256:..."


@dataclass(frozen=True)
class OnnxKubernetesConfig(TargetConfig):
    """``-C key=value`` settings of the onnx-kubernetes target."""

    target: ClassVar[str] = TARGET

    kind: str = option(
        "kserve",
        "kserve: a KServe InferenceService (V2 protocol, our image as custom predictor); "
        "deployment: Deployment + Service + HorizontalPodAutoscaler (clusters without KServe).",
        choices=("kserve", "deployment"),
    )
    kubeconfig: str | None = option(
        None, "Kubeconfig file; default $KUBECONFIG, then ~/.kube/config, then in-cluster."
    )
    context: str | None = option(None, "Kubeconfig context; default its current-context.")
    namespace: str | None = option(
        None, "Namespace of every object; default the context's namespace, else 'default'."
    )
    registry: str | None = option(
        None,
        "Registry the image is pushed to and the cluster pulls from, HOST[:PORT][/PATH] "
        "(required unless image is given); the pods reference the pushed digest.",
    )
    image: str | None = option(
        None, "Deploy this pushed image (REPO@sha256:...) instead of building.", check=_digest_ref
    )
    image_repository: str | None = option(
        None, "Repository under the registry; default mlflow-deploy/MODEL."
    )
    image_pull_secret: str | None = option(
        None, "Name of a Secret of type dockerconfigjson the pods pull with (private registry)."
    )
    min_replicas: int = option(
        1, "Fewest pods (HPA / KServe minReplicas).", check=config.at_least(1)
    )
    max_replicas: int = option(3, "Most pods (HPA / KServe maxReplicas).", check=config.at_least(1))
    target_cpu_utilization: int = option(
        70, "kind=deployment: the HPA's CPU utilisation target (%).", check=config.between(1, 100)
    )
    pdb_min_available: str | None = option(
        None,
        "kind=deployment: add a PodDisruptionBudget with this minAvailable (2 or 50%).",
        check=_min_available,
    )
    service_type: str = option(
        "ClusterIP",
        "kind=deployment: type of the Service (port 80 -> the pods' 8080).",
        choices=("ClusterIP", "NodePort", "LoadBalancer"),
    )
    canary_traffic_percent: int | None = option(
        None,
        "kind=kserve, update: percent of traffic the new version gets (KServe canary); the "
        "next update without it promotes it to 100.",
        check=config.between(0, 100),
    )
    cpu_request: str = option("500m", "CPU request of the server container.", check=_quantity)
    memory_request: str = option("512Mi", "Memory request.", check=_quantity)
    cpu_limit: str | None = option("1", "CPU limit (empty: none).", check=_quantity)
    memory_limit: str | None = option("1Gi", "Memory limit.", check=_quantity)
    user: str = option(
        recipes.DEFAULT_USER,
        "UID:GID (numbers) the server runs as (runAsUser/runAsGroup/fsGroup).",
        check=_container.user_spec,
    )
    grpc_port: int | None = option(
        None,
        "kind=deployment: also serve the Open Inference Protocol over gRPC; the Service's gRPC "
        "port (h2c, to the pods' 8081; the image then carries grpcio). Off by default.",
        check=_container.HOST_PORT,
    )
    workers: int = _container.runtime_option("workers", 1, "Server processes per pod.")
    max_batch_size: int | None = _container.runtime_option(
        "max_batch_size", None, "Most rows per onnxruntime call (runtime default 64)."
    )
    max_batch_time_ms: float | None = _container.runtime_option(
        "max_batch_time_ms", None, "Longest wait to fill a batch in ms (runtime default 0)."
    )
    log_level: str = _container.runtime_option(
        "log_level", "INFO", "Log level of the server.", choices=LOG_LEVELS
    )
    auth_token_file: str | None = option(
        None,
        "Local file holding a bearer token: stored in a Secret the target creates/updates and "
        "mounted as a file in the pods (never inline in the spec, never an env variable).",
    )
    endpoint_url: str | None = option(
        None,
        "URL predict uses (an Ingress, or kubectl port-forward); default KServe's status.url "
        "or the Service's load balancer.",
    )
    rollout_timeout: float = option(
        300.0,
        "Seconds create/update wait for the rollout; then it counts as failed (rolled back).",
        check=config.positive,
    )
    stop_timeout: float = option(
        30.0,
        "Seconds a stopping server gets to finish requests (grace period = this + 5).",
        check=config.positive,
    )
    dry_run: bool = option(
        False, "Write the manifests as YAML (to output, else stdout) instead of applying them."
    )
    output: str | None = option(None, "dry_run: directory the manifests are written to.")
    base_image: str = _config.base_image_option()
    python_version: str | None = _config.python_version_option()
    platform: str | None = _config.platform_option()
    wheel_cache: str | None = _config.wheel_cache_option()
    rebuild: bool = _config.rebuild_option()
    local_port: int = option(
        8080, "run_local: host port the image answers on.", check=_container.HOST_PORT
    )

    def remembered(self) -> dict[str, Any]:
        """What the objects' annotations keep (an update starts from it)."""
        return {k: v for k, v in self.to_dict().items() if k not in ACTION_KEYS}


def target_help() -> str:
    """The text of ``mlflow deployments help -t onnx-kubernetes`` (keys from the config class)."""
    return f"""\
The onnx-kubernetes target builds the onnx-docker image (the model as ONNX + the serving
runtime), pushes it to -C registry and runs it on Kubernetes by digest, through the official
kubernetes client and your kubeconfig (-C kubeconfig, else $KUBECONFIG, else ~/.kube/config,
else the in-cluster service account; -C context, -C namespace):

  kind=kserve      a KServe InferenceService (serving.kserve.io/v1beta1): our image as the
                   custom predictor container, V2 protocol, probes on /v2/health/ready and
                   /v2/health/live, min/max replicas, canary_traffic_percent on update.
  kind=deployment  Deployment + Service + HorizontalPodAutoscaler (+ PodDisruptionBudget with
                   pdb_min_available), for clusters without KServe.

Pods are hardened: runAsNonRoot, read-only root filesystem (/tmp is a memory emptyDir),
capabilities drop ALL, no privilege escalation, seccomp RuntimeDefault, requests/limits; the
bearer token (auth_token_file) goes into a Secret the target creates/updates, mounted as a file.

create blocks until the rollout is ready (rollout_timeout) or deletes what it made. update
patches the workload and waits (Deployment status / KServe Ready); a failed rollout is rolled
back to the previous pod template / predictor spec and reported with the pod events. delete is
idempotent. dry_run=true writes the manifests (YAML) to -C output=DIR or stdout, no cluster.

Config (-C key=value):
{OnnxKubernetesConfig.help_table()}

Example:
  mlflow deployments create -t onnx-kubernetes --name churn -m models:/churn@champion \\
      -C registry=registry.example.com/ml -C kind=kserve -C auth_token_file=token.txt
  mlflow deployments update -t onnx-kubernetes --name churn -m models:/churn/4 \\
      -C canary_traffic_percent=10
  mlflow deployments create -t onnx-kubernetes --name churn -m models:/churn/3 \\
      -C kind=deployment -C image=registry.example.com/ml/churn@sha256:... \\
      -C dry_run=true -C output=manifests/
  mlflow deployments delete -t onnx-kubernetes --name churn
"""


def run_local(name, model_uri, flavor=None, config=None):
    """Build the image and run it on the local Docker engine as the pods run it, until Ctrl+C."""
    OnnxKubernetesDeploymentClient(TARGET).serve_foreground(name, model_uri, flavor, config)


class OnnxKubernetesDeploymentClient(_client.DelegatingClient, BaseDeploymentClient):
    """Deployments of ONNX models on Kubernetes (the work is done by
    ``_k8s_target.KubernetesTarget``, whose docstrings say what each call guarantees).

    ``progress`` (a callable taking one line) receives build, push and rollout progress; by
    default it is written to stderr.
    """

    def __init__(self, target_uri: str = TARGET):
        super().__init__(target_uri)
        self.progress = _client.stderr_progress
        self.deployments = _k8s_target.KubernetesTarget(
            TARGET,
            FLAVOR,
            OnnxKubernetesConfig,
            RECIPE,
            progress=lambda line: self.progress(line),
        )

    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: the image as the pods run it, on local Docker, until Ctrl+C."""
        _k8s_local.serve_foreground(self.deployments, name, model_uri, flavor, config)
