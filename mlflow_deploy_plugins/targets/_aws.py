"""AWS access for the cloud targets: one boto3 session from the standard credential chain, its
clients, and botocore exceptions translated into ours (boto3 is the optional ``[aws]`` extra).

Credentials are never taken from ``-C`` keys, written into images, configs or logs: boto3 finds
them itself (environment, shared files, SSO, container or instance roles).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _deployments

_logger = logging.getLogger(__name__)

#: Where boto3 looks for credentials, in its order (what the error tells the user to set up).
CREDENTIAL_CHAIN = (
    "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN]), "
    "the shared files ~/.aws/credentials and ~/.aws/config (AWS_PROFILE selects a profile; "
    "`aws configure` writes them, `aws sso login` fills an SSO profile), "
    "a container role (ECS/EKS) and the EC2 instance role"
)
#: A SageMaker tag value holds at most this many characters.
TAG_VALUE_MAX = 256
#: SageMaker's "no such resource" answers are ValidationExceptions with this text.
_NOT_FOUND_TEXT = ("could not find", "does not exist", "not found", "no scalable target found")


class AwsError(_deployments.DeploymentError):
    """An AWS call failed; the message names the call and AWS's error code and message."""


@dataclass
class AwsSession:
    """One boto3 session for a region, and its clients (created on first use)."""

    region: str
    target: str
    session: Any = field(repr=False)
    _clients: dict = field(default_factory=dict, repr=False)

    def client(self, service: str):
        """The boto3 client of ``service`` (``AWS_ENDPOINT_URL[_<SERVICE>]`` apply: boto3
        reads them itself)."""
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region)
        return self._clients[service]

    def call(self, service: str, operation: str, **kwargs) -> dict:
        """``client(service).<operation>(**kwargs)``, with AWS errors translated.

        Raises:
            AlreadyExistsError: AWS said the resource already exists.
            AwsError: any other refusal, naming the operation and AWS's message.
            EngineUnavailableError: the service could not be reached.
        """
        method = getattr(self.client(service), operation)
        return translate(lambda: method(**kwargs), f"{service}.{operation}", self.target)


def session_for(region_name: str | None, target: str) -> AwsSession:
    """A session whose credentials the standard AWS chain found, for ``region_name`` (or the
    chain's region: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile's ``region``).

    Raises:
        InvalidInputError: boto3 is not installed; no region anywhere (names ``region_name``);
            no credentials (says where the chain looked).
    """
    try:
        import boto3
        import botocore.exceptions
    except ImportError as e:
        raise InvalidInputError(
            f"The {target} target needs boto3: pip install 'mlflow-deploy-plugins[aws]'"
        ) from e
    try:
        session = boto3.session.Session()
    except botocore.exceptions.ProfileNotFound as e:
        raise InvalidInputError(f"{e}: set AWS_PROFILE to a profile of ~/.aws/config") from e
    region = region_name or session.region_name
    if not region:
        raise InvalidInputError(
            f"Config key 'region_name' of target '{target}' is required: no region was given "
            "and the AWS chain has none (set -C region_name=us-east-1, AWS_REGION, or `region` "
            "in the profile of ~/.aws/config)"
        )
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as e:
        raise InvalidInputError(f"AWS credentials could not be loaded: {e}") from e
    if credentials is None:
        raise InvalidInputError(
            f"No AWS credentials found for target '{target}'. They come only from the standard "
            f"AWS chain, searched in this order: {CREDENTIAL_CHAIN}. Run `aws configure` (or "
            "`aws sso login --profile NAME` and set AWS_PROFILE); never pass keys as -C values."
        )
    return AwsSession(region, target, session)


def translate(call: Callable[[], Any], what: str, target: str) -> Any:
    """Run ``call``; botocore exceptions become ours (``raise ... from``)."""
    import botocore.exceptions

    try:
        return call()
    except botocore.exceptions.ClientError as e:
        code, message = error_of(e)
        if code in ("ResourceInUse", "ResourceAlreadyExistsException") or (
            code == "ValidationException" and "already exist" in message.lower()
        ):
            raise AlreadyExistsError(f"{what}: {message}") from e
        raise AwsError(f"AWS {what} failed ({code}): {message}") from e
    except botocore.exceptions.NoCredentialsError as e:
        raise InvalidInputError(
            f"No AWS credentials found for target '{target}' (searched: {CREDENTIAL_CHAIN})"
        ) from e
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
    ) as e:
        raise _deployments.EngineUnavailableError(f"AWS {what}: cannot reach AWS ({e})") from e


def error_of(e: Exception) -> tuple[str, str]:
    """``(code, message)`` of a botocore ``ClientError``."""
    error = getattr(e, "response", {}).get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", e))


def is_not_found(e: BaseException) -> bool:
    """True when the translated error says the resource does not exist."""
    cause = e.__cause__ if isinstance(e, AwsError) else e
    code, message = error_of(cause) if cause is not None else ("", str(e))
    if code in (
        "ResourceNotFound",
        "NoSuchKey",
        "NoSuchBucket",
        "404",
        "RepositoryNotFoundException",
        "ObjectNotFoundException",
    ):
        return True
    return code == "ValidationException" and any(t in message.lower() for t in _NOT_FOUND_TEXT)


def ignore_missing(session: AwsSession, service: str, operation: str, **kwargs) -> bool:
    """Call a delete; a resource that is already gone is no error. Returns whether it existed."""
    try:
        session.call(service, operation, **kwargs)
    except AwsError as e:
        if is_not_found(e):
            return False
        raise
    return True


# --- tags: what get/list read back ----------------------------------------------------------


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """``{k: v}`` -> AWS's ``[{"Key": k, "Value": v}]`` (empty values dropped)."""
    return [{"Key": k, "Value": str(v)} for k, v in tags.items() if v not in (None, "")]


def tag_dict(tags: Iterable[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


def encode_tag(key: str, text: str) -> dict[str, str]:
    """``text`` as tags a SageMaker tag value can hold (its alphabet excludes JSON's quotes and
    braces): base64url, split into ``key``, ``key.1``, ... of at most 256 characters."""
    data = base64.urlsafe_b64encode(text.encode()).decode()
    parts = [data[i : i + TAG_VALUE_MAX] for i in range(0, len(data), TAG_VALUE_MAX)] or [""]
    return {(key if i == 0 else f"{key}.{i}"): part for i, part in enumerate(parts)}


def decode_tag(tags: dict[str, str], key: str) -> str | None:
    """The text :func:`encode_tag` wrote under ``key``, or None."""
    if key not in tags:
        return None
    parts, i = [tags[key]], 1
    while f"{key}.{i}" in tags:
        parts.append(tags[f"{key}.{i}"])
        i += 1
    return base64.urlsafe_b64decode("".join(parts).encode()).decode()
