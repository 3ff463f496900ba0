"""The serving image in Amazon ECR: the repository (created when missing), the registry login
from ``GetAuthorizationToken`` (held in memory for one push, never written or logged) and the
docker-SDK push with its progress."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mlflow_deploy_plugins.targets import _aws, _push

_logger = logging.getLogger(__name__)


#: ``docker push`` to ECR failed; ``logs`` holds the registry's last answers.
PushError = _push.PushError


@dataclass(frozen=True)
class PushedImage:
    """An image in ECR: what a SageMaker model's ``Image`` is."""

    uri: str  # <account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>
    repository: str
    tag: str
    digest: str


def registry_address(proxy_endpoint: str) -> str:
    """The registry ``docker push`` talks to: the token's ``proxyEndpoint`` without its scheme.

    (The tests point this at a local registry: there is no registry behind a fake ECR.)
    """
    return proxy_endpoint.split("://", 1)[-1].rstrip("/")


def ensure_repository(aws: _aws.AwsSession, name: str, tags: dict[str, str]) -> str:
    """The URI of ECR repository ``name``, created (scan on push, tagged) when missing."""
    try:
        found = aws.call("ecr", "describe_repositories", repositoryNames=[name])
        return found["repositories"][0]["repositoryUri"]
    except _aws.AwsError as e:
        if not _aws.is_not_found(e):
            raise
    created = aws.call(
        "ecr",
        "create_repository",
        repositoryName=name,
        imageScanningConfiguration={"scanOnPush": True},
        tags=_aws.tag_list(tags),
    )
    _logger.info("Created ECR repository %s", name)
    return created["repository"]["repositoryUri"]


def push_image(
    aws: _aws.AwsSession,
    docker_client,
    local_tag: str,
    repository: str,
    tags: dict[str, str],
    progress: Callable[[str], None],
) -> PushedImage:
    """Push the local image ``local_tag`` to ECR repository ``repository`` (same tag).

    Args:
        aws: the session.
        docker_client: a docker SDK client holding the image.
        local_tag: ``repo:tag`` of the built image; its tag (a content hash) is kept.
        repository: the ECR repository name (created when missing, with ``tags``).
        tags: the repository's tags.
        progress: receives one line per layer state change.

    Returns:
        The pushed image.

    Raises:
        PushError: the registry refused the push (its last answers in ``logs``).
    """
    tag = local_tag.rsplit(":", 1)[1]
    repository_uri = ensure_repository(aws, repository, tags)
    auth = aws.call("ecr", "get_authorization_token")["authorizationData"][0]
    username, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    push_ref = f"{registry_address(auth['proxyEndpoint'])}/{repository}"
    docker_client.images.get(local_tag).tag(push_ref, tag=tag)
    progress(f"Pushing {local_tag} to {repository_uri}:{tag}")
    try:
        credentials = {"username": username, "password": password}
        digest = _push.stream_push(docker_client, push_ref, tag, progress, credentials)
    finally:
        with contextlib.suppress(Exception):  # the extra local name only; the image stays
            docker_client.images.remove(f"{push_ref}:{tag}", noprune=True)
    progress(f"Pushed {repository_uri}:{tag} ({digest or 'no digest reported'})")
    return PushedImage(f"{repository_uri}:{tag}", repository, tag, digest)


def delete_image(aws: _aws.AwsSession, repository: str, tag: str) -> bool:
    """Delete tag ``tag`` of ``repository`` from ECR; False when it was not there."""
    try:
        done = aws.call(
            "ecr", "batch_delete_image", repositoryName=repository, imageIds=[{"imageTag": tag}]
        )
    except _aws.AwsError as e:
        if _aws.is_not_found(e):
            return False
        raise
    return bool(done.get("imageIds"))
