"""The Kubernetes objects of an ``onnx-kubernetes`` deployment, rendered as plain dicts: the
hardened serving container (the same facts as the Docker target's, from ``_container``), the
token Secret, and either a KServe ``InferenceService`` or Deployment + Service + HPA (+ PDB)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from mlflow_deploy_plugins.core.constants import DIST_NAME
from mlflow_deploy_plugins.targets import _container, _deployments
from mlflow_deploy_plugins.targets._images import recipes

_logger = logging.getLogger(__name__)

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
KSERVE_CRD = f"{KSERVE_PLURAL}.{KSERVE_GROUP}"
#: KServe's name of a custom predictor's serving container.
KSERVE_CONTAINER = "kserve-container"
CONTAINER = "server"
#: Where the token Secret is mounted (a directory: the kubelet refreshes its files in place).
TOKEN_DIR = "/run/secrets/mlflow-deploy"
TOKEN_KEY = "token"
LIVENESS_PATH = "/v2/health/live"
#: Pods and objects of one deployment are selected by these labels.
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: The token's sha256 (never the token) on the pod template: a new token rolls the pods.
TOKEN_DIGEST = _deployments.LABEL_PREFIX + "token_sha256"
SERVICE_PORT = 80


def secret_name(name: str) -> str:
    return f"{name}-mlflow-deploy-token"


def selector(target: str, name: str) -> dict[str, str]:
    """The labels that select one deployment's objects and pods."""
    return {INSTANCE_LABEL: name, _deployments.LABEL_TARGET: target}


def labels(target: str, name: str) -> dict[str, str]:
    return {**selector(target, name), MANAGED_BY_LABEL: DIST_NAME}


def annotations(
    target: str,
    name: str,
    resolved: _deployments.ResolvedModel,
    image: str,
    remembered: Mapping[str, Any],
) -> dict[str, str]:
    """What ``get`` reads back: lineage, image and the remembered ``-C`` keys (annotations,
    since label values cannot hold URIs or JSON)."""
    return {
        _deployments.LABEL_DEPLOYMENT: name,
        _deployments.LABEL_TARGET: target,
        **resolved.labels(),
        _deployments.LABEL_IMAGE: image,
        _deployments.LABEL_CONFIG: json.dumps(dict(remembered), sort_keys=True),
        _deployments.LABEL_CREATED: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def metadata(cfg, target: str, name: str, notes: Mapping[str, str] | None = None) -> dict:
    meta = {"name": name, "namespace": cfg.namespace, "labels": labels(target, name)}
    if notes:
        meta["annotations"] = dict(notes)
    return meta


def token_secret(cfg, target: str, name: str, token: str) -> dict:
    """The Secret holding the bearer token (read from ``-C auth_token_file``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(cfg, target, secret_name(name)),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def secret_token(secret: dict) -> str:
    """The token a live token Secret holds."""
    return base64.b64decode(secret["data"][TOKEN_KEY]).decode()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


# --- the pod ---------------------------------------------------------------------------------


def serving_container(cfg, image: str, container_name: str) -> dict:
    """The hardened serving container: non-root, read-only root, no capabilities, no privilege
    escalation, seccomp RuntimeDefault, requests/limits, probes on the runtime's health routes,
    the token as a file from the Secret (never an environment variable)."""
    port = recipes.CONTAINER_PORT
    env = _container.runtime_environment(
        {
            "host": "0.0.0.0",
            "port": port,
            "workers": cfg.workers,
            "log_level": cfg.log_level,
            "max_batch_size": cfg.max_batch_size,
            "max_batch_time_ms": cfg.max_batch_time_ms,
            "auth_token_file": f"{TOKEN_DIR}/{TOKEN_KEY}" if cfg.auth_token_file else None,
            "grpc_port": _container.GRPC_CONTAINER_PORT if cfg.grpc_port else None,
        }
    )
    ports = [{"name": "http1", "containerPort": port, "protocol": "TCP"}]
    if cfg.grpc_port:
        ports.append(
            {"name": "grpc", "containerPort": _container.GRPC_CONTAINER_PORT, "protocol": "TCP"}
        )
    uid, gid = _container.uid_gid(cfg.user)
    mounts = [{"name": "tmp", "mountPath": _container.TMP_PATH}]
    if cfg.auth_token_file:
        mounts.append({"name": "auth-token", "mountPath": TOKEN_DIR, "readOnly": True})
    requests = {"cpu": cfg.cpu_request, "memory": cfg.memory_request}
    limits = {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit}
    return {
        "name": container_name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": ports,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "readinessProbe": _probe(recipes.HEALTH_PATH, port, period=5, failures=3),
        "livenessProbe": _probe(LIVENESS_PATH, port, period=10, failures=6),
        "resources": {
            "requests": {k: v for k, v in requests.items() if v},
            "limits": {k: v for k, v in limits.items() if v},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": list(_container.DROPPED_CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def _probe(path: str, port: int, *, period: int, failures: int) -> dict:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pod_spec(cfg, image: str, name: str, container_name: str) -> dict:
    """The pod's spec (KServe inlines the same fields into its predictor)."""
    uid, gid = _container.uid_gid(cfg.user)
    volumes: list[dict] = [
        {
            "name": "tmp",
            "emptyDir": {"medium": "Memory", "sizeLimit": f"{_container.TMP_SIZE_MIB}Mi"},
        }
    ]
    if cfg.auth_token_file:
        volumes.append(
            {
                "name": "auth-token",
                "secret": {
                    "secretName": secret_name(name),
                    "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
                    "defaultMode": 0o440,  # readable by fsGroup = the server's group
                },
            }
        )
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": int(cfg.stop_timeout) + 5,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "fsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [serving_container(cfg, image, container_name)],
        "volumes": volumes,
    }
    if cfg.image_pull_secret:
        spec["imagePullSecrets"] = [{"name": cfg.image_pull_secret}]
    return spec


# --- kind=kserve -----------------------------------------------------------------------------


def inference_service(
    cfg, target: str, name: str, image: str, notes: Mapping[str, str], token: str | None
) -> dict:
    """A KServe InferenceService (v1beta1) with our image as its custom predictor container,
    which speaks the Open Inference Protocol (V2) on port 8080."""
    predictor = {
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        **pod_spec(cfg, image, name, KSERVE_CONTAINER),
    }
    if cfg.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent
    if token:  # the predictor's pod annotations: a new token makes a new revision
        predictor["annotations"] = {TOKEN_DIGEST: token_digest(token)}
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": metadata(cfg, target, name, notes),
        "spec": {"predictor": predictor},
    }


# --- kind=deployment -------------------------------------------------------------------------


def deployment(
    cfg, target: str, name: str, image: str, notes: Mapping[str, str], token: str | None
) -> dict:
    """A Deployment whose rolling update never lowers the ready pods (maxUnavailable 0) and
    reports a stuck rollout after ``rollout_timeout`` (progressDeadlineSeconds)."""
    template_notes = {_deployments.LABEL_IMAGE: image}
    if token:
        template_notes[TOKEN_DIGEST] = token_digest(token)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(cfg, target, name, notes),
        "spec": {
            "replicas": cfg.min_replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": max(1, int(cfg.rollout_timeout)),
            "selector": {"matchLabels": selector(target, name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels(target, name), "annotations": template_notes},
                "spec": pod_spec(cfg, image, name, CONTAINER),
            },
        },
    }


def service(cfg, target: str, name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(cfg, target, name),
        "spec": {
            "type": cfg.service_type,
            "selector": selector(target, name),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http1", "protocol": "TCP"},
                *(
                    [
                        {
                            "name": "grpc",
                            "port": cfg.grpc_port,
                            "targetPort": "grpc",
                            "protocol": "TCP",
                            "appProtocol": "kubernetes.io/h2c",
                        }
                    ]
                    if cfg.grpc_port
                    else []
                ),
            ],
        },
    }


def autoscaler(cfg, target: str, name: str) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(cfg, target, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": cfg.min_replicas,
            "maxReplicas": cfg.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": cfg.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def disruption_budget(cfg, target: str, name: str) -> dict:
    value = cfg.pdb_min_available
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(cfg, target, name),
        "spec": {
            "minAvailable": int(value) if value.isdigit() else value,
            "selector": {"matchLabels": selector(target, name)},
        },
    }


def render(
    cfg,
    target: str,
    name: str,
    image: str,
    notes: Mapping[str, str],
    token: str | None,
) -> list[dict]:
    """Every object of the deployment, in the order they are applied (Secret first)."""
    objects = [token_secret(cfg, target, name, token)] if token else []
    if cfg.kind == "kserve":
        return [*objects, inference_service(cfg, target, name, image, notes, token)]
    objects += [
        deployment(cfg, target, name, image, notes, token),
        service(cfg, target, name),
        autoscaler(cfg, target, name),
    ]
    if cfg.pdb_min_available:
        objects.append(disruption_budget(cfg, target, name))
    return objects


def to_yaml(objects: list[dict]) -> str:
    """The objects as one multi-document YAML text (``kubectl apply -f`` reads it)."""
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
