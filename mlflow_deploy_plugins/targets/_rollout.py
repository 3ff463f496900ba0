"""Health-gated rollout of serving containers: start, wait until ready (bounded), swap, retire
the old one; a new version that never becomes ready is removed and the old one keeps serving."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _deployments, _docker, _endpoints

_logger = logging.getLogger(__name__)

#: Starts one container: ``(container name, host port, takeover) -> the started container``;
#: ``takeover`` is the worker count of the server it replaces on the same port, or None.
StartContainer = Callable[[str, int, "int | None"], Any]


class RolloutConfig(Protocol):
    """The ``-C`` keys a rollout reads (the target config has them under these names)."""

    port: int
    host: str
    network_mode: str
    user: str
    workers: int
    ready_timeout: float
    stop_timeout: float


class ServerFacts(Protocol):
    """How the image's server says it is ready (an image ``Recipe`` has these)."""

    health_path: str
    ready_line: Any  # re.Pattern


@dataclass(frozen=True)
class UpdatePlan:
    """How an update replaces the running version (see :func:`plan_update`)."""

    #: Bridge mode, same port: prove on a scratch port, stop the old one, start on the port.
    swap: bool
    #: Host mode, same port: the old server's worker count, or None (no steering).
    takeover: int | None
    #: The new endpoint is not the running one's: check that its port is free first.
    check_port: bool


def plan_update(name: str, old_cfg: RolloutConfig, cfg: RolloutConfig, old_running: bool):
    """Decide how ``name`` goes from ``old_cfg`` to ``cfg``, refusing what cannot be gap-free.

    Args:
        name: the deployment.
        old_cfg: the running version's config.
        cfg: the new version's config.
        old_running: whether the old container runs.

    Returns:
        The :class:`UpdatePlan`.

    Raises:
        InvalidInputError: host or network mode changes on the same port, or (host mode) the
            user changes on the same port: SO_REUSEPORT only shares a port within one user.
    """
    same_endpoint = (cfg.port, cfg.host, cfg.network_mode) == (
        old_cfg.port,
        old_cfg.host,
        old_cfg.network_mode,
    )
    if old_running and cfg.port == old_cfg.port and not same_endpoint:
        raise InvalidInputError(
            f"Changing host or network_mode of '{name}' while keeping port {cfg.port} is not "
            "possible without a gap: change the port too, or delete and create it again"
        )
    shared = same_endpoint and old_running
    if shared and cfg.network_mode == "host" and cfg.user != old_cfg.user:
        raise InvalidInputError(
            f"Changing user ({old_cfg.user} -> {cfg.user}) on the same port is not possible "
            "in host network mode: SO_REUSEPORT only shares a port between processes of the "
            "same user. Change the port too, or delete and create the deployment."
        )
    swap = shared and cfg.network_mode == "bridge"
    # Steering every new connection to the new server needs it to cover the old one's sockets.
    takeover = old_cfg.workers if shared and not swap and old_cfg.workers >= cfg.workers else None
    return UpdatePlan(swap=swap, takeover=takeover, check_port=not shared)


@dataclass
class ContainerRollout:
    """Start, prove and replace the containers of one deployment.

    In host network mode on the same port the new server joins the old one's SO_REUSEPORT
    group and takes every new connection (``takeover``), so no request fails. In bridge mode
    Docker cannot publish a port twice: the new version is proven on a scratch port, then
    swapped in (a short refusal window; the old one is started again if the swap fails).
    """

    deployment: str
    #: The name the deployment's container has once settled.
    container_name: str
    start: StartContainer
    server: ServerFacts
    progress: Callable[[str], None]

    def create(
        self, cfg: RolloutConfig, *, container_name: str | None = None, what: str | None = None
    ) -> tuple[Any, float]:
        """Start the first container on ``cfg.port`` and wait until it is ready.

        Args:
            cfg: the deployment's config.
            container_name: default :attr:`container_name`.
            what: names it in messages; default ``Deployment '<name>'``.

        Returns:
            The ready container and the seconds it took.

        Raises:
            DeploymentError: it exited or was not ready in time (nothing is left).
        """
        container = None
        try:
            container = self.start(container_name or self.container_name, cfg.port, None)
            what = what or f"Deployment '{self.deployment}'"
            return container, self.wait_ready(container, cfg, cfg.port, what)
        except BaseException:
            _docker.remove(container)
            raise

    def replace(self, old, old_cfg: RolloutConfig, cfg: RolloutConfig, plan: UpdatePlan):
        """Start the new version and prove it ready; the old one still runs unless ``swap``.

        Args:
            old: the running version's container.
            old_cfg: its config.
            cfg: the new config.
            plan: from :func:`plan_update`.

        Returns:
            The new, ready container (retire the old one with :meth:`retire`, then
            :meth:`settle` the new one).

        Raises:
            DeploymentError: the new version did not become ready; it is removed, the old one
                keeps serving (started again after a failed bridge swap).
        """
        if plan.swap:
            return self._swap_bridge(old, old_cfg, cfg)
        what = f"New version of '{self.deployment}'"
        return self._start_next(cfg, cfg.port, what, plan.takeover)

    def retire(self, old, old_cfg: RolloutConfig) -> None:
        """Stop ``old`` gracefully (in-flight requests finish, the payload log is flushed)."""
        _docker.stop(old, old_cfg.stop_timeout)
        _docker.remove(old)
        self.progress(f"Old container {old.name} stopped and removed")

    def settle(self, new) -> None:
        """Give the new container the deployment's name."""
        new.rename(self.container_name)
        new.reload()

    def wait_ready(self, container, cfg: RolloutConfig, port: int, what: str) -> float:
        """Seconds until ``container`` logged that it serves and ``host:port`` answers ready.

        In host network mode during an update two servers share the port, so an HTTP probe
        alone cannot tell which one answered: the ready line, read from this container's own
        log, can.

        Raises:
            DeploymentError: the server exited or restarted, or was not ready within
                ``cfg.ready_timeout`` (its last log lines in ``logs``).
        """
        url = _endpoints.endpoint_url(cfg.host, port) + self.server.health_path
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
                raise _deployments.DeploymentError(
                    f"{what}: the server exited at start (exit code {state.get('ExitCode')})",
                    logs=_docker.tail(container),
                )
            if state.get("Status") != "running":
                return False
            if not logged_ready:  # read the log until the line shows up, not on every poll
                logs = container.logs().decode(errors="replace")
                logged_ready = bool(self.server.ready_line.search(logs))
                if not logged_ready:
                    return False
            return _endpoints.http_ready(url)

        try:
            return _endpoints.wait_until(check, cfg.ready_timeout, what=what)
        except TimeoutError as e:
            raise _deployments.DeploymentError(str(e), logs=_docker.tail(container)) from e

    def _start_next(self, cfg: RolloutConfig, port: int, what: str, takeover: int | None = None):
        """Start a second container of the deployment and wait for it; removed on failure."""
        next_name = f"{self.container_name}--{uuid.uuid4().hex[:8]}"
        container = None
        try:
            container = self.start(next_name, port, takeover)
            seconds = self.wait_ready(container, cfg, port, what)
        except BaseException as e:
            _docker.remove(container)
            if isinstance(e, _deployments.DeploymentError):
                raise _deployments.DeploymentError(
                    f"Update of '{self.deployment}' failed; the previous version keeps serving. "
                    f"{e.summary}",
                    logs=e.logs,
                ) from e
            raise
        self.progress(f"{what} ready in {seconds:.2f} s ({container.name})")
        return container

    def _swap_bridge(self, old, old_cfg: RolloutConfig, cfg: RolloutConfig):
        """Bridge mode, same port: prove the new version on a scratch port, then swap."""
        scratch_port = _endpoints.free_port(_endpoints.client_host(cfg.host))
        scratch = self._start_next(cfg, scratch_port, "Trial run")
        _docker.stop(scratch, 5)
        _docker.remove(scratch)
        _docker.stop(old, old_cfg.stop_timeout)
        try:
            return self._start_next(cfg, cfg.port, f"New version of '{self.deployment}'")
        except BaseException:
            old.start()
            try:
                self.wait_ready(old, old_cfg, old_cfg.port, "Previous version")
            except _deployments.DeploymentError as e:
                _logger.error("Previous version of '%s' did not come back: %s", self.deployment, e)
            raise


def serve_image_foreground(
    target,
    name: str,
    resolved: _deployments.ResolvedModel,
    image: str,
    run,
    options: dict[str, Any],
    *,
    container_prefix: str,
    remembered: dict[str, Any],
    serving_as: str,
    url_path: str = "",
) -> None:
    """``run_local`` of a target whose deployments live elsewhere (SageMaker, Kubernetes): run
    ``image`` on the local engine as a labelled ``run_local`` container, wait for readiness,
    stream its log until Ctrl+C, then stop and remove it.

    Args:
        target: the target's lifecycle object (``target``, ``recipe``, ``progress``, ``docker()``).
        name: names the local container.
        resolved: the model it serves (labels, the progress line).
        image: the image to run.
        run: its container keys (a ``_container.LocalRun``).
        options: ``containers.create`` options (e.g. from ``_container.container_options``).
        container_prefix: the container name's prefix.
        remembered: the ``-C`` settings shown on the container's label.
        serving_as: how it is served, for the progress line ("as SageMaker would").
        url_path: appended to the endpoint URL in the progress line.
    """
    from mlflow_deploy_plugins.targets import _container

    client = target.docker()
    labels = _container.container_labels(
        target.target,
        name,
        resolved,
        host=run.host,
        port=run.port,
        network_mode=run.network_mode,
        image=image,
        config=remembered,
        local=True,
    )

    def start_container(container_name: str, port: int, takeover):
        return _docker.run_container(client, image, container_name, labels, options)

    container_name = f"{container_prefix}local-{name}-{uuid.uuid4().hex[:6]}"
    rollout = ContainerRollout(
        name, container_name, start_container, target.recipe, target.progress
    )

    def start():
        container, _ = rollout.create(run, what=f"'{name}'")
        target.progress(
            f"Serving '{name}' {serving_as} ({resolved.lineage()}) at "
            f"{_endpoints.endpoint_url(run.host, run.port)}{url_path}; Ctrl+C stops it"
        )
        return container

    _docker.run_foreground(start, name, run.stop_timeout, target.progress)
