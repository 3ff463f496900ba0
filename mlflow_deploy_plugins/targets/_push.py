"""Pushing a built serving image to a registry with the docker SDK: layer progress as it goes,
the registry's last answers kept for the error, and the digest the registry gave the image
(what a deployment references, so a moved tag cannot change what runs)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from mlflow_deploy_plugins.targets import _deployments

_logger = logging.getLogger(__name__)


class PushError(_deployments.DeploymentError):
    """``docker push`` failed; ``logs`` holds the registry's last answers."""


def stream_push(
    docker_client,
    ref: str,
    tag: str,
    progress: Callable[[str], None],
    auth_config: dict | None = None,
) -> str:
    """Push ``ref:tag`` (already tagged locally), reporting each layer's state changes.

    Args:
        docker_client: a docker SDK client holding the image.
        ref: ``registry/repository`` pushed to.
        tag: the tag pushed.
        progress: receives one line per layer state change.
        auth_config: ``{"username", "password"}`` for the registry, or None (the engine's own
            credentials, e.g. from ``docker login``).

    Returns:
        The ``sha256:...`` digest the registry reported ("" when it reported none).

    Raises:
        PushError: the registry refused the push or could not be reached.
    """
    import docker.errors

    seen: dict[str, str] = {}
    tail: list[str] = []
    digest = ""
    try:
        stream = docker_client.api.push(
            ref, tag=tag, auth_config=auth_config, stream=True, decode=True
        )
        for chunk in stream:
            if "error" in chunk:
                tail.append(str(chunk["error"]))
                raise PushError(
                    f"Pushing {ref}:{tag} failed: {chunk['error']}", logs="\n".join(tail[-20:])
                )
            status, layer = str(chunk.get("status", "")), chunk.get("id")
            tail.append(f"{layer}: {status}" if layer else status)
            del tail[:-40]
            if layer and seen.get(layer) != status and not status.startswith("Pushing"):
                seen[layer] = status
                progress(f"  {layer}: {status}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
    except docker.errors.APIError as e:
        raise PushError(
            f"Pushing {ref}:{tag} failed: {e.explanation or e}", logs="\n".join(tail[-20:])
        ) from e
    return digest
