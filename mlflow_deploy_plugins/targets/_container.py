"""The hardened serving container spec: ``containers.create`` options, the runtime's environment,
mounted host files, the rules of the container ``-C`` keys, and its labels (read back by ``get``)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from mlflow_deploy_plugins.core import config
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.serving.settings import ServingSettings
from mlflow_deploy_plugins.targets import _deployments, _endpoints
from mlflow_deploy_plugins.targets._images import recipes

_logger = logging.getLogger(__name__)

#: Where ``-C auth_token_file`` is mounted (read-only): the token is never an env variable.
TOKEN_PATH = "/run/secrets/mlflow-deploy-token"
#: Where ``-C payload_log_dir`` is mounted (read-write).
PAYLOAD_LOG_PATH = "/var/lib/mlflow-deploy/payload-log"
#: Where the runtime's gRPC server listens in bridge network mode (``-C grpc_port`` publishes it).
GRPC_CONTAINER_PORT = 8081
# The hardening every serving container gets, read by the Docker options below and by the
# Kubernetes pod spec (targets/_k8s_manifests.py): one place for both.
#: The only writable path under the read-only root filesystem, and its size in MiB.
TMP_PATH = "/tmp"
TMP_SIZE_MIB = 64
#: Linux capabilities dropped (all: the server needs none).
DROPPED_CAPABILITIES = ("ALL",)
#: Most processes (server workers + threads) one container may run.
PIDS_LIMIT = 512
_MEMORY = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)
_USER = re.compile(r"^\d+:\d+$")


# The rules of the container -C keys, declared on each target's fields with option(check=...).
#: The host port: a deployment needs a fixed one (the runtime's port 0 means "any").
HOST_PORT = config.between(1, 65535)


def user_spec(value: str) -> str | None:
    return None if _USER.match(value) else "must be UID:GID in numbers (e.g. 10001:10001)"


def memory_size(value: str) -> str | None:
    return None if _MEMORY.match(value) else "must be a size like 512m or 2g"


def runtime_setting(name: str) -> config.Check:
    """The runtime's own rule for a -C key that is a serving setting of the same name, so the
    target and the runtime never disagree on a range."""
    return config.check_of(ServingSettings, name)


def runtime_option(name: str, default: Any, help: str, **kwargs: Any):
    """A target ``-C`` key that is the serving setting ``name``: same name, the runtime's rule."""
    return config.setting(default, help, check=runtime_setting(name), **kwargs)


# The container -C keys every target running hardened serving containers declares with the same
# name, rule and help (a new field object per call: each config class declares its own).
def network_mode_option():
    return config.setting(
        "host",
        "host: the server binds host:port directly (zero-downtime updates with SO_REUSEPORT); "
        "bridge: the container port 8080 is published on host:port (short gap on update).",
        choices=("host", "bridge"),
    )


def user_option(default: str):
    return config.setting(
        default,
        "UID:GID (numbers) the server runs as; it must be able to read auth_token_file and "
        "write payload_log_dir.",
        check=user_spec,
    )


def memory_option():
    return config.setting(
        None, "Memory limit of the container, e.g. 512m or 2g.", check=memory_size
    )


def cpus_option():
    return config.setting(
        None, "CPU limit of the container in cores, e.g. 1.5.", check=config.positive
    )


def restart_policy_option():
    return config.setting(
        "unless-stopped",
        "Docker restart policy of the container.",
        choices=("no", "on-failure", "unless-stopped", "always"),
    )


class ContainerConfig(Protocol):
    """The ``-C`` keys a target running hardened serving containers declares (same names)."""

    port: int
    host: str
    network_mode: str  # host | bridge
    user: str  # UID:GID
    workers: int
    log_level: str
    max_batch_size: int | None
    max_connections: int | None
    max_body_bytes: int | None
    max_inflight_body_bytes: int | None
    max_header_count: int | None
    first_request_timeout_s: float | None
    offload_rows: int | None
    max_batch_time_ms: float | None
    payload_log_sample_rate: float | None
    auth_token_file: str | None
    payload_log_dir: str | None
    memory: str | None
    cpus: float | None
    restart_policy: str
    ready_timeout: float
    stop_timeout: float


@dataclass(frozen=True)
class LocalRun:
    """The container keys of a ``run_local`` container (what :func:`container_options` and
    ``_rollout`` read): a target whose own keys are not container keys (SageMaker, Kubernetes)
    runs its image locally with these."""

    port: int
    network_mode: str
    ready_timeout: float
    host: str = "127.0.0.1"
    user: str = recipes.DEFAULT_USER
    workers: int = 1
    stop_timeout: float = 30.0
    restart_policy: str = "no"
    auth_token_file: str | None = None
    payload_log_dir: str | None = None
    memory: str | None = None
    cpus: float | None = None


def uid_gid(user: str) -> tuple[int, int]:
    """``"10001:10001"`` -> ``(10001, 10001)``."""
    uid, gid = user.split(":")
    return int(uid), int(gid)


def serving_environment(
    cfg: ContainerConfig,
    port: int,
    *,
    container_port: int,
    takeover: int | None = None,
    deployment: str = "",
) -> dict[str, str]:
    """The serving runtime's ``MLFLOW_DEPLOY_*`` variables for one container on ``port``.

    Args:
        cfg: the target config.
        port: the host port.
        container_port: where the image's server listens in bridge network mode.
        takeover: host mode, same port: the worker count of the server this one replaces
            (the new server then steers every new connection to itself).
        deployment: the deployment's name (unused: this runtime names its model after the
            bundle; another image's environment may need it).

    Returns:
        Variable -> value.
    """
    host_mode = cfg.network_mode == "host"
    grpc_port = getattr(cfg, "grpc_port", None)
    settings = {
        "host": cfg.host if host_mode else "0.0.0.0",
        "port": port if host_mode else container_port,
        "grpc_port": grpc_port if host_mode or not grpc_port else GRPC_CONTAINER_PORT,
        "workers": cfg.workers,
        "log_level": cfg.log_level,
        # lets the next version bind the same port during an update (host network mode)
        "reuse_port": host_mode,
        "max_batch_size": cfg.max_batch_size,
        "max_batch_time_ms": cfg.max_batch_time_ms,
        "payload_log_sample_rate": cfg.payload_log_sample_rate,
        "max_connections": cfg.max_connections,
        "max_body_bytes": cfg.max_body_bytes,
        "max_inflight_body_bytes": cfg.max_inflight_body_bytes,
        "max_header_count": cfg.max_header_count,
        "first_request_timeout_s": cfg.first_request_timeout_s,
        "offload_rows": cfg.offload_rows,
        "reuse_port_takeover": takeover if host_mode and takeover else None,
        "auth_token_file": TOKEN_PATH if cfg.auth_token_file else None,
        "payload_log_dir": PAYLOAD_LOG_PATH if cfg.payload_log_dir else None,
    }
    return runtime_environment(settings)


def runtime_environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """Serving settings (name -> value, ``None`` left out) as the runtime's ``MLFLOW_DEPLOY_*``
    variables, the one spelling every target uses."""
    return {
        ServingSettings.env_var(name): _env_value(value)
        for name, value in settings.items()
        if value is not None
    }


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def container_options(
    cfg: ContainerConfig, port: int, environment: dict[str, str], *, container_port: int
) -> dict[str, Any]:
    """Keyword arguments of ``containers.create`` for one hardened serving container.

    Non-root, read-only root with a ``/tmp`` tmpfs, no capabilities, no-new-privileges, an init
    process, pids/memory/CPU limits; the token file and payload log directory mounted.

    Args:
        cfg: the target config.
        port: the host port.
        environment: the container's variables (e.g. :func:`serving_environment`).
        container_port: the port published on ``cfg.host:port`` in bridge network mode.

    Returns:
        The options (labels and name excepted).
    """
    volumes = {}
    if cfg.auth_token_file:
        volumes[os.path.abspath(cfg.auth_token_file)] = {"bind": TOKEN_PATH, "mode": "ro"}
    if cfg.payload_log_dir:
        volumes[os.path.abspath(cfg.payload_log_dir)] = {"bind": PAYLOAD_LOG_PATH, "mode": "rw"}
    options: dict[str, Any] = {
        "environment": environment,
        "user": cfg.user,
        "read_only": True,
        "tmpfs": {TMP_PATH: f"rw,nosuid,nodev,size={TMP_SIZE_MIB}m"},
        "cap_drop": list(DROPPED_CAPABILITIES),
        "security_opt": ["no-new-privileges:true"],
        "init": True,  # forwards SIGTERM, reaps the worker processes
        "pids_limit": PIDS_LIMIT,
        "volumes": volumes,
    }
    if cfg.restart_policy != "no":
        options["restart_policy"] = {"Name": cfg.restart_policy}
        if cfg.restart_policy == "on-failure":
            options["restart_policy"]["MaximumRetryCount"] = 5
    if cfg.network_mode == "host":
        options["network_mode"] = "host"
    else:
        options["network_mode"] = "bridge"
        options["ports"] = {f"{container_port}/tcp": (cfg.host, port)}
        if getattr(cfg, "grpc_port", None):
            options["ports"][f"{GRPC_CONTAINER_PORT}/tcp"] = (cfg.host, cfg.grpc_port)
    if cfg.memory:
        options["mem_limit"] = cfg.memory
    if cfg.cpus:
        options["nano_cpus"] = int(cfg.cpus * 1e9)
    return options


def prepare_host_paths(cfg: ContainerConfig) -> None:
    """Check the mounted host files before anything is built: the token file must be readable
    and the payload log directory (created when missing) writable by ``cfg.user``.

    The container has no capabilities: root inside cannot bypass permissions either.

    Args:
        cfg: the target config.

    Raises:
        InvalidInputError: naming the path, the user and how to fix it.
    """
    uid, gid = uid_gid(cfg.user)
    if cfg.auth_token_file:
        path = cfg.auth_token_file
        if not os.path.isfile(path):
            raise InvalidInputError(f"auth_token_file {path!r} is not a file")
        if not _deployments.read_token(path):
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


# --- labels: what get/list read back -----------------------------------------------------------


def container_labels(
    target: str,
    name: str,
    resolved: _deployments.ResolvedModel,
    *,
    host: str,
    port: int,
    network_mode: str,
    image: str,
    config: Mapping[str, Any],
    local: bool = False,
) -> dict[str, str]:
    """The labels a deployment's container carries: everything ``get`` shows is read back
    from them (:func:`describe_container`), nothing is kept in a local file.

    Args:
        target: the target's name.
        name: the deployment (or the ``run_local`` name when ``local``).
        resolved: the model it serves.
        host: the address it answers on.
        port: its host port.
        network_mode: host or bridge.
        image: the image tag.
        config: the remembered ``-C`` settings (an update starts from them).
        local: a ``run_local`` container, which is no deployment.

    Returns:
        Label -> value.
    """
    labels = {
        _deployments.LABEL_TARGET: target,
        **resolved.labels(),
        _deployments.LABEL_PORT: str(port),
        _deployments.LABEL_HOST: host,
        _deployments.LABEL_NETWORK_MODE: network_mode,
        _deployments.LABEL_IMAGE: image,
        _deployments.LABEL_CONFIG: json.dumps(dict(config), sort_keys=True),
        _deployments.LABEL_CREATED: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    labels[_deployments.LABEL_RUN_LOCAL if local else _deployments.LABEL_DEPLOYMENT] = name
    return labels


def remembered_config(container) -> dict[str, Any]:
    """The ``-C`` settings a container was started with (its config label)."""
    return remembered_config_of(container.labels)


def remembered_config_of(labels: Mapping[str, str]) -> dict[str, Any]:
    """The ``-C`` settings kept in a config label (of a container or a service)."""
    return json.loads(labels.get(_deployments.LABEL_CONFIG, "{}"))


def describe_container(container, *, target: str, flavor: str) -> dict[str, Any]:
    """What ``get_deployment``/``list_deployments`` return, read from a container's labels.

    Args:
        container: the deployment's current container.
        target: the target's name.
        flavor: the flavor it serves.

    Returns:
        Name, status, health, endpoint URL, lineage, image, container, network and config.
    """
    labels = container.labels
    state = container.attrs.get("State", {})
    host = labels.get(_deployments.LABEL_HOST, "127.0.0.1")
    port = int(labels.get(_deployments.LABEL_PORT, 0))
    return {
        "name": labels.get(_deployments.LABEL_DEPLOYMENT),
        "flavor": flavor,
        "target": target,
        "status": state.get("Status", container.status),
        "health": (state.get("Health") or {}).get("Status"),
        "endpoint_url": _endpoints.endpoint_url(host, port),
        **_deployments.describe_lineage(labels),
        "image": labels.get(_deployments.LABEL_IMAGE),
        "image_id": container.attrs.get("Image"),
        "container": container.name,
        "container_id": container.id[:12],
        "network_mode": labels.get(_deployments.LABEL_NETWORK_MODE),
        "host": host,
        "port": port,
        "created_at": labels.get(_deployments.LABEL_CREATED),
        "config": remembered_config(container),
    }
