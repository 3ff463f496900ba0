"""Replicated deployments on a Docker Swarm manager (``-C replicas=N`` of a Docker target).

The same image, environment and hardening as a single container, run as a swarm service on the
host network: every replica binds ``host:port`` with SO_REUSEPORT, so the replicas on one node
share the port and the kernel spreads connections over them. Updates are swarm rolling updates
(one task at a time, start-first, rolled back by swarm when a new task fails); their outcome is
read from the service's ``UpdateStatus``, since ``docker service update`` itself reports success
even when swarm rolled the update back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _container, _deployments, _endpoints

_logger = logging.getLogger(__name__)

#: Put on the task containers instead of the deployment label: they are no deployment of their
#: own (a container deployment's lookups never see them).
LABEL_SERVICE = _deployments.LABEL_PREFIX + "service"
#: How often swarm runs the image's health check (the image's own 15 s would make every
#: rolling step wait that long before the task counts as running).
HEALTH_INTERVAL_S = 3
#: How long swarm watches each updated task for a failure before the next one.
MONITOR_S = 5
_NS = 1_000_000_000
_UPDATE_DONE = ("completed", "rollback_completed", "paused", "rollback_paused")
_TASK_FAILED = ("failed", "rejected", "orphaned")
_VERDICTS = {
    "rollback_completed": "rolled it back",
    "paused": "paused it",
    "rollback_paused": "paused its rollback",
    "timeout": "did not finish it in time",
}
_RESTART = {"no": "none", "on-failure": "on-failure", "unless-stopped": "any", "always": "any"}


def check_manager(client, target: str) -> None:
    """Raise unless the engine is a swarm manager (only managers create and update services).

    Raises:
        InvalidInputError: naming the engine's swarm state and what to do.
    """
    swarm = client.info().get("Swarm") or {}
    if swarm.get("ControlAvailable"):
        return
    state = swarm.get("LocalNodeState") or "inactive"
    if state == "active":
        hint = "this node is a swarm worker: point DOCKER_HOST (or the target URI) at a manager"
    else:
        hint = (
            "run `docker swarm init` (a single node is enough) or point DOCKER_HOST "
            "(or the target URI) at a swarm manager"
        )
    raise InvalidInputError(
        f"-C replicas needs a Docker Swarm manager; this engine's swarm state is '{state}': "
        f"{hint}. Without -C replicas, {target} runs one container."
    )


def is_manager(client) -> bool:
    return bool((client.info().get("Swarm") or {}).get("ControlAvailable"))


def deployment_services(client, target: str, name: str | None = None) -> list:
    """Every service of deployment ``name`` of ``target`` (or all of them); [] off a manager."""
    if not is_manager(client):
        return []
    label = _deployments.LABEL_DEPLOYMENT + (f"={name}" if name is not None else "")
    return client.services.list(filters={"label": [f"{_deployments.LABEL_TARGET}={target}", label]})


def port_claim(client, port: int, deployment: str | None = None) -> str | None:
    """The deployment whose service has ``port``, other than ``deployment``; None if none."""
    if not is_manager(client):
        return None
    for service in client.services.list(filters={"label": f"{_deployments.LABEL_PORT}={port}"}):
        owner = service.attrs["Spec"].get("Labels", {}).get(_deployments.LABEL_DEPLOYMENT)
        if owner != deployment:
            return owner
    return None


def _when(stamp: str | None) -> datetime:
    """An engine timestamp (RFC 3339, nanoseconds, trailing zeros trimmed) as a datetime."""
    if not stamp:
        return datetime.min.replace(tzinfo=timezone.utc)
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def labels(service) -> dict[str, str]:
    return service.attrs["Spec"].get("Labels") or {}


def replicas_of(service) -> int:
    return service.attrs["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0)


@dataclass
class SwarmRollout:
    """Create, update and remove the service of one deployment (see the module docstring)."""

    client: Any
    deployment: str
    service_name: str
    progress: Callable[[str], None]
    #: What swarm said about the last update (``UpdateStatus.Message``), in order.
    _messages: list[str] = field(default_factory=list)

    def spec(
        self,
        cfg,
        image: str,
        service_labels: Mapping[str, str],
        environment: Mapping[str, str],
    ) -> dict[str, Any]:
        """The keyword arguments of ``services.create``/``update`` for ``cfg``: the container
        settings of :func:`_container.container_options`, as swarm spells them."""
        from docker.types import (
            Healthcheck,
            Mount,
            Resources,
            RestartPolicy,
            RollbackConfig,
            ServiceMode,
            UpdateConfig,
        )
        from docker.utils import parse_bytes

        tmp_bytes = _container.TMP_SIZE_MIB * 1024 * 1024
        mounts = [Mount(_container.TMP_PATH, None, type="tmpfs", tmpfs_size=tmp_bytes)]
        if cfg.payload_log_dir:
            mounts.append(
                Mount(_container.PAYLOAD_LOG_PATH, os.path.abspath(cfg.payload_log_dir), "bind")
            )
        steps = dict(parallelism=1, order="start-first", monitor=MONITOR_S * _NS)
        restart = _RESTART[cfg.restart_policy]
        return {
            "name": self.service_name,
            "labels": dict(service_labels),
            "container_labels": {
                LABEL_SERVICE: self.deployment,
                _deployments.LABEL_TARGET: service_labels[_deployments.LABEL_TARGET],
            },
            "mode": ServiceMode("replicated", replicas=cfg.replicas),
            "networks": ["host"],
            "env": [f"{k}={v}" for k, v in environment.items()],
            "user": cfg.user,
            "read_only": True,
            "cap_drop": list(_container.DROPPED_CAPABILITIES),
            "init": True,
            "mounts": mounts,
            "secrets": self._token_secret(cfg),
            "healthcheck": Healthcheck(interval=HEALTH_INTERVAL_S * _NS),
            "stop_grace_period": int(cfg.stop_timeout * _NS),
            "resources": Resources(
                cpu_limit=int(cfg.cpus * _NS) if cfg.cpus else None,
                mem_limit=parse_bytes(cfg.memory) if cfg.memory else None,
            ),
            "restart_policy": RestartPolicy(
                condition=restart, max_attempts=5 if restart == "on-failure" else 0
            ),
            "update_config": UpdateConfig(**steps, failure_action="rollback", max_failure_ratio=0),
            "rollback_config": RollbackConfig(**steps, failure_action="pause"),
        }

    def create(self, image: str, spec: Mapping[str, Any], cfg) -> tuple[Any, float]:
        """Create the service and wait until every replica is healthy and ``host:port``
        answers; a service that does not get there is removed (with its first failed task's
        log lines in the error).

        Returns:
            The service and the seconds it took.
        """
        started = time.monotonic()
        service = self.client.services.create(image, **spec)
        self.progress(f"Service {self.service_name} created: {cfg.replicas} replica(s) starting")
        try:
            self._wait_replicas(service, cfg)
        except BaseException:
            self.remove(service, cfg.stop_timeout)
            raise
        return service, time.monotonic() - started

    def update(self, service, image: str, spec: Mapping[str, Any], cfg) -> float:
        """Roll the service to ``spec`` and wait for swarm's verdict.

        Raises:
            DeploymentError: swarm rolled the update back (or paused it), or it did not finish
                within the bound (then the rollback is asked for here); the previous version
                keeps serving; the failed task's last log lines are in the error.
        """
        started = time.monotonic()
        before = (service.attrs.get("UpdateStatus") or {}).get("StartedAt")
        service.update(image=image, **spec)
        service.reload()
        updated_at = service.attrs.get("UpdatedAt")
        bound = cfg.ready_timeout * max(cfg.replicas, replicas_of(service)) + 2 * MONITOR_S
        what = f"Update of '{self.deployment}'"
        state = self._wait_update(service, before, bound)
        if state is None:  # swarm still at it: stop it here, the old tasks come back
            self.progress(f"{what}: not done after {bound:.0f} s; rolling back")
            self._rollback(service)
            state = self._wait_update(service, before, bound, rolling_back=True) or "timeout"
        if state != "completed":
            verdict = _VERDICTS.get(state, state)
            raise _deployments.DeploymentError(
                f"{what} failed; Docker Swarm {verdict} and the previous version keeps "
                f"serving. Swarm says: {'; '.join(self._messages) or state}",
                logs=self._failed_task_logs(service, since=updated_at),
            )
        self._wait_replicas(service, cfg)
        return time.monotonic() - started

    def remove(self, service, stop_timeout: float) -> None:
        """Remove the service and wait (bounded) until its containers are gone, so the port
        is free when this returns; then remove its token secrets."""
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            service.remove()
        filters = {"label": f"com.docker.swarm.service.name={self.service_name}"}
        with contextlib.suppress(TimeoutError):
            _endpoints.wait_until(
                # sparse: no inspect per container (one swarm is removing raises NotFound)
                lambda: not self.client.containers.list(all=True, filters=filters, sparse=True),
                stop_timeout + 15,
                what=f"The containers of service {self.service_name}",
            )
        self.remove_secrets(keep=None)

    def remove_secrets(self, keep: str | None) -> None:
        """Remove this deployment's token secrets but ``keep`` (one still in use stays)."""
        import docker.errors

        for secret in self.client.secrets.list(
            filters={"label": f"{LABEL_SERVICE}={self.deployment}"}
        ):
            if secret.name != keep:
                with contextlib.suppress(docker.errors.APIError):
                    secret.remove()

    def _token_secret(self, cfg) -> list:
        """The token file as a swarm secret at the path the runtime reads (never an env var);
        named by its content hash, so an update with a new token makes a new one."""
        if not cfg.auth_token_file:
            return []
        import docker.errors
        from docker.types import SecretReference

        with open(cfg.auth_token_file, "rb") as f:
            data = f.read()
        name = f"{self.service_name}-token-{hashlib.sha256(data).hexdigest()[:12]}"
        try:
            secret = self.client.secrets.get(name)
        except docker.errors.NotFound:
            secret = self.client.secrets.create(
                name=name, data=data, labels={LABEL_SERVICE: self.deployment}
            )
        uid, gid = _container.uid_gid(cfg.user)
        filename = os.path.basename(_container.TOKEN_PATH)
        return [SecretReference(secret.id, name, filename, str(uid), str(gid), mode=0o400)]

    def _wait_replicas(self, service, cfg) -> None:
        """Until ``cfg.replicas`` tasks of the current spec run (healthy) and the port answers."""
        url = _endpoints.endpoint_url(cfg.host, cfg.port) + "/v2/health/ready"

        def check() -> bool:
            service.reload()
            spec_since = _when(service.attrs.get("UpdatedAt"))
            tasks = service.tasks()
            current = [
                t
                for t in tasks
                if t["Status"]["State"] in _TASK_FAILED and _when(t.get("CreatedAt")) >= spec_since
            ]
            if current:
                raise _deployments.DeploymentError(
                    f"Deployment '{self.deployment}': a replica failed at start "
                    f"({current[0]['Status'].get('Err') or current[0]['Status']['State']})",
                    logs=self._task_logs(current[0]),
                )
            running = [
                t
                for t in tasks
                if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
            ]
            return len(running) >= cfg.replicas and _endpoints.http_ready(url)

        what = f"Deployment '{self.deployment}' ({cfg.replicas} replica(s))"
        try:
            _endpoints.wait_until(check, cfg.ready_timeout, what=what)
        except TimeoutError as e:
            raise _deployments.DeploymentError(str(e), logs=self._failed_task_logs(service)) from e

    def _wait_update(self, service, before, bound: float, rolling_back: bool = False):
        """The terminal ``UpdateStatus.State`` of the update started after ``before``, or None
        when it is not reached within ``bound`` seconds."""
        deadline = time.monotonic() + bound
        last = None
        while time.monotonic() < deadline:
            service.reload()
            status = service.attrs.get("UpdateStatus") or {}
            state = status.get("State")
            fresh = status.get("StartedAt") != before or rolling_back
            if fresh and state and state != last:
                self.progress(f"Update of '{self.deployment}': {state.replace('_', ' ')}")
                last = state
            message = status.get("Message")
            if fresh and message and message not in self._messages:
                self._messages.append(message)
            if fresh and state in _UPDATE_DONE:
                return state
            time.sleep(0.5)
        return None

    def _rollback(self, service) -> None:
        """Ask swarm to roll the service back to its previous spec (``docker service
        rollback``; the SDK has no call for it)."""
        api = self.client.api
        url = api._url("/services/{0}/update", service.id)
        params = {"version": service.attrs["Version"]["Index"], "rollback": "previous"}
        api._raise_for_status(api._post_json(url, data=service.attrs["Spec"], params=params))

    def _failed_task_logs(self, service, since: str | None = None) -> str:
        tasks = [
            t
            for t in service.tasks()
            if t["Status"]["State"] in _TASK_FAILED + ("shutdown", "complete")
            and _when(t.get("CreatedAt")) > _when(since)
            and t["Status"].get("Err")
        ]
        if not tasks:
            return ""
        return self._task_logs(max(tasks, key=lambda t: _when(t.get("CreatedAt"))))

    def _task_logs(self, task) -> str:
        """The task's error and its container's last lines; never raises."""
        import docker.errors

        err = task["Status"].get("Err") or ""
        container_id = task["Status"].get("ContainerStatus", {}).get("ContainerID")
        if not container_id:
            return err
        try:
            lines = self.client.containers.get(container_id).logs(tail=40)
        except docker.errors.APIError as e:
            return f"{err}\n(logs unavailable: {e})"
        return f"{err}\n{lines.decode(errors='replace').rstrip()}".strip()


def describe_service(client, service, *, target: str, flavor: str) -> dict[str, Any]:
    """What ``get_deployment``/``list_deployments`` return for a replicated deployment: the
    keys of a container deployment plus ``replicas``, ``running_replicas`` and
    ``update_status`` (swarm's verdict on the last update)."""
    service.reload()
    spec_labels = labels(service)
    tasks = [t for t in service.tasks() if t["DesiredState"] == "running"]
    running = sum(t["Status"]["State"] == "running" for t in tasks)
    wanted = replicas_of(service)
    host = spec_labels.get(_deployments.LABEL_HOST, "127.0.0.1")
    port = int(spec_labels.get(_deployments.LABEL_PORT, 0))
    update = service.attrs.get("UpdateStatus") or {}
    return {
        "name": spec_labels.get(_deployments.LABEL_DEPLOYMENT),
        "flavor": flavor,
        "target": target,
        "status": "running"
        if running >= wanted > 0
        else ("starting" if running == 0 else "degraded"),
        "health": "healthy" if running >= wanted > 0 else "unhealthy",
        "endpoint_url": _endpoints.endpoint_url(host, port),
        **_deployments.describe_lineage(spec_labels),
        "image": spec_labels.get(_deployments.LABEL_IMAGE),
        "service": service.name,
        "service_id": service.id[:12],
        "replicas": wanted,
        "running_replicas": running,
        "update_status": update.get("State"),
        "update_message": update.get("Message"),
        "network_mode": "host",
        "host": host,
        "port": port,
        "created_at": spec_labels.get(_deployments.LABEL_CREATED),
        "config": _container.remembered_config_of(spec_labels),
    }
