"""The image of an ``onnx-kubernetes`` deployment: built by the shared builder, pushed to
``-C registry`` with the docker SDK (layer progress shown), referenced by digest
(``registry/repo@sha256:...``) so a re-pushed tag can never change what the pods run."""

from __future__ import annotations

import logging
import socket

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.targets import _push
from mlflow_deploy_plugins.targets._images import builder, recipes

_logger = logging.getLogger(__name__)


def registry_address(registry: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST[:PORT][/PATH]`` (443, as Docker, when no port is given)."""
    host = registry.split("/", 1)[0]
    if host.startswith("["):  # [IPv6]:port
        address, _, port = host[1:].partition("]:")
        return address.rstrip("]"), int(port or 443)
    address, _, port = host.partition(":")
    return address, int(port) if port.isdigit() else 443


def check_reachable(registry: str, timeout: float = 5.0) -> None:
    """Refuse, before anything is built, a registry this machine cannot connect to.

    Raises:
        InvalidInputError: naming the registry, the address tried and the error.
    """
    host, port = registry_address(registry)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        raise InvalidInputError(
            f"Config key 'registry': the image registry {registry!r} is unreachable from this "
            f"machine (connecting to {host}:{port}: {e}). Check the address and that the "
            "registry runs; Docker pushes to it, so a registry without TLS must be in the "
            "engine's insecure-registries (loopback addresses are allowed by default)"
        ) from e


def build_and_push(target, resolved, cfg) -> str:
    """Build (or reuse) the serving image of ``resolved`` and push it to ``cfg.registry``.

    Args:
        target: the ``KubernetesTarget`` (its recipe, docker client and progress).
        resolved: the model.
        cfg: the target config (``registry``, ``image_repository`` and the build keys).

    Returns:
        ``registry/repository@sha256:...``.

    Raises:
        InvalidInputError: the registry is unreachable (checked before the build).
        PushError: the push failed (the registry's last answers in ``logs``).
    """
    registry = cfg.registry.rstrip("/")
    check_reachable(registry)
    repository = cfg.image_repository or builder.default_repository(resolved.served_name)
    client = target.docker()
    built = builder.ensure_image_for(
        client,
        resolved,
        cfg,
        recipe=recipes.for_config(target.recipe, cfg),
        repository=f"{registry}/{repository}",
        progress=target.progress,
    )
    ref, tag = built.tag.rsplit(":", 1)
    target.progress(f"Pushing {built.tag}")
    digest = _push.stream_push(client, ref, tag, target.progress) or _repo_digest(
        client, built.tag, ref
    )
    if not digest:
        raise _push.PushError(f"The registry reported no digest for {built.tag}")
    pushed = f"{ref}@{digest}"
    target.progress(f"Pushed {pushed}")
    return pushed


def _repo_digest(client, tag: str, ref: str) -> str:
    for entry in client.images.get(tag).attrs.get("RepoDigests") or []:
        name, _, digest = entry.partition("@")
        if name == ref:
            return digest
    return ""
