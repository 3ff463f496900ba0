"""Docker engine helpers: the client, container lookup by labels, container and image lifecycle,
docker SDK exceptions translated into ours (the SDK is the optional ``[docker]`` extra)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _deployments, _endpoints

_logger = logging.getLogger(__name__)


def connect(base_url: str | None, target: str):
    """A docker SDK client that answered a ping.

    Args:
        base_url: the engine's URL (``onnx-docker:/<base URL>``); None: ``DOCKER_HOST`` or the
            default socket.
        target: the target's name, for the messages.

    Returns:
        The client.

    Raises:
        InvalidInputError: the docker SDK is not installed.
        EngineUnavailableError: the engine does not answer (the message says how to start it).
    """
    try:
        import docker
    except ImportError as e:
        raise InvalidInputError(
            f"The {target} target needs the docker SDK: pip install 'mlflow-deploy-plugins[docker]'"
        ) from e
    where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise _deployments.EngineUnavailableError(
            f"Docker is not running or not reachable at {where} ({e}). Start it: "
            "`sudo systemctl start docker` (or `sudo dockerd &` where there is no systemd; "
            "Docker Desktop: start the app), or point DOCKER_HOST at a running engine."
        ) from e
    return client


def deployment_containers(client, target: str, name: str | None = None) -> list:
    """Every container (any state) of deployment ``name`` of ``target``, or of all of them."""
    filters = [f"{_deployments.LABEL_TARGET}={target}", _deployments.LABEL_DEPLOYMENT]
    if name is not None:
        filters[1] = f"{_deployments.LABEL_DEPLOYMENT}={name}"
    return client.containers.list(all=True, filters={"label": filters})


def current(containers: list, canonical_name: str | None):
    """The container that represents a deployment.

    Args:
        containers: the deployment's containers.
        canonical_name: the container name a settled deployment has.

    Returns:
        The one with the canonical name, else the newest (an update in progress, or one
        interrupted before the rename); None when there is none.
    """
    if not containers:
        return None
    for container in containers:
        if canonical_name is not None and container.name == canonical_name:
            return container
    return max(containers, key=lambda c: c.attrs.get("Created", ""))


def status(container) -> str:
    """``running``, ``exited``, ... as of the container's last reload."""
    return container.attrs.get("State", {}).get("Status", container.status)


def tail(container, lines: int = 40) -> str:
    """The container's last log lines (for error messages); never raises."""
    if container is None:
        return ""
    try:
        return container.logs(tail=lines).decode(errors="replace").rstrip()
    except Exception as e:  # the container may be gone already; the logs are a courtesy
        return f"(logs unavailable: {e})"


def stop(container, timeout: float) -> None:
    """Stop gracefully (SIGTERM, SIGKILL after ``timeout`` s); a vanished container is fine."""
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        container.stop(timeout=int(max(1, timeout)))


def remove(container) -> None:
    """Force-remove ``container`` (None, vanished or already being removed: nothing to do)."""
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


def run_container(
    client, image: str, name: str, labels: Mapping[str, str], options: Mapping[str, Any]
):
    """Create and start one container; nothing is left behind when that fails.

    Args:
        client: a docker SDK client.
        image: the image tag.
        name: the container name.
        labels: its labels.
        options: the other keyword arguments of ``containers.create``.

    Returns:
        The started container.

    Raises:
        AlreadyExistsError: a container of that name exists.
        DeploymentError: the engine refused to create or start it.
    """
    import docker.errors

    container = None
    try:
        container = client.containers.create(image, name=name, labels=dict(labels), **options)
        container.start()
    except docker.errors.APIError as e:
        remove(container)
        if e.status_code == 409 and "name" in str(e.explanation):
            raise AlreadyExistsError(f"A container named {name} already exists") from e
        owner = labels.get(_deployments.LABEL_DEPLOYMENT) or labels.get(
            _deployments.LABEL_RUN_LOCAL
        )
        raise _deployments.DeploymentError(
            f"Could not start a container for '{owner}': {e.explanation or e}"
        ) from e
    return container


def run_foreground(
    start: Callable[[], Any], name: str, stop_timeout: float, progress: Callable[[str], None]
) -> None:
    """``run_local``: start a container (``start`` returns it ready), stream its log to stderr
    until it exits or Ctrl+C, then stop it gracefully and remove it.

    Raises:
        DeploymentError: the server exited with a non-zero code (its last log lines in ``logs``).
    """
    container = None
    try:
        container = start()
        for chunk in container.logs(stream=True, follow=True, since=int(time.time())):
            sys.stderr.write(chunk.decode(errors="replace"))
        container.reload()
        code = container.attrs["State"].get("ExitCode")
        if code:
            raise _deployments.DeploymentError(
                f"'{name}' exited with code {code}", logs=tail(container)
            )
    except KeyboardInterrupt:
        progress(f"Stopping '{name}'")
    finally:
        if container is not None:
            stop(container, stop_timeout)
            remove(container)


def check_port(client, host: str, port: int, deployment: str | None = None) -> None:
    """The port must be free and not claimed by another deployment (a stopped one would take it
    back when restarted): checked before anything is built.

    Args:
        client: a docker SDK client.
        host: the address the deployment will answer on.
        port: its port.
        deployment: the deployment being updated (its own claim does not count).

    Raises:
        InvalidInputError: naming the deployment holding the port, or another program.
    """
    claims = client.containers.list(
        all=True,
        filters={"label": [f"{_deployments.LABEL_PORT}={port}", _deployments.LABEL_TARGET]},
    )
    for container in claims:
        owner = container.labels.get(_deployments.LABEL_DEPLOYMENT) or container.labels.get(
            _deployments.LABEL_RUN_LOCAL
        )
        if deployment is not None and owner == deployment:
            continue
        if status(container) == "running" or container.labels.get(_deployments.LABEL_DEPLOYMENT):
            raise InvalidInputError(
                f"Port {port} is already used by deployment '{owner}' "
                f"(container {container.name}); choose another with -C port=..."
            )
    if _endpoints.port_in_use(host, port):
        raise InvalidInputError(
            f"Port {port} on {host} is already in use by another program; "
            "choose another with -C port=..."
        )


def ensure_base_image(client, base_image: str, progress: Callable[[str], None]):
    """The base image object, pulled when missing locally.

    Raises:
        InvalidInputError: it is missing and cannot be pulled.
    """
    import docker.errors

    try:
        return client.images.get(base_image)
    except docker.errors.ImageNotFound:
        pass
    progress(f"Pulling base image {base_image}")
    try:
        return client.images.pull(base_image)
    except docker.errors.APIError as e:
        raise InvalidInputError(
            f"Base image {base_image!r} is not present locally and could not be pulled "
            f"({e.explanation or e}); build or load it first, or choose another with "
            "-C base_image=..."
        ) from e


def get_image(client, tag: str):
    """The local image ``tag``, or None."""
    import docker.errors

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def remove_image(client, image_ref: str) -> bool:
    """Remove an image unless a container still uses it.

    Returns:
        True when removed; False when absent or in use.
    """
    import docker.errors

    try:
        client.images.remove(image_ref, noprune=False)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as e:
        if getattr(e, "status_code", None) == 409:  # in use by a container
            _logger.info("Keeping image %s: %s", image_ref, e.explanation)
            return False
        raise
