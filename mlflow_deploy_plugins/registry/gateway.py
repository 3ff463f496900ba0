"""The one way into the model registry: absent things are None, lists are paged, tags clipped.

Promotion, the automation pipeline and poller, the audit trail and drift monitoring all read and
tag the registry through :class:`RegistryGateway`, so "does not exist" is decided in one place.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import DeployPluginError

_logger = logging.getLogger(__name__)

T = TypeVar("T")

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
_ALREADY_EXISTS = ErrorCode.Name(RESOURCE_ALREADY_EXISTS)


def is_not_found(error: MlflowException) -> bool:
    """True when MLflow (a registry, a tracking server, a deployment target) said "no such thing".

    Args:
        error: what an MLflow client call raised.
    """
    return error.error_code == _NOT_FOUND


def is_already_exists(error: MlflowException) -> bool:
    """True when a create call lost a race (or repeated itself): the thing exists now.

    Args:
        error: what an MLflow create call raised.
    """
    return error.error_code == _ALREADY_EXISTS


def error_message(error: object) -> str:
    """The readable reason of ``error``: an MlflowException's message, else its text.

    Args:
        error: an exception, or a reason already written as text.
    """
    return getattr(error, "message", None) or str(error)


def paged(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every result of a paged MLflow search (``search_runs``, ``list_webhooks``, ...).

    Args:
        search: a client method that takes ``page_token=`` and returns a ``PagedList``.
        kwargs: its other arguments (filter, page size, order).

    Yields:
        The results, page after page.
    """
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def alias_version(model: RegisteredModel | None, alias: str) -> str | None:
    """The version ``alias`` of ``model`` points at (None: no such model or alias).

    Args:
        model: a registered model as read from the registry, or None when it does not exist.
        alias: the alias name.
    """
    if model is None:
        return None
    version = (model.aliases or {}).get(alias)
    return None if version is None else str(version)


def experiment_id(client: MlflowClient, name: str, tags: Mapping[str, str] | None = None) -> str:
    """The id of experiment ``name``, created (with ``tags``) if missing.

    Safe against a concurrent creator (a second receiver, watcher or report).

    Raises:
        MlflowException: the experiment exists but is deleted (its runs would be invisible).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=dict(tags or {}))
        except MlflowException as e:
            if not is_already_exists(e):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise MlflowException(
            f"Experiment {name!r} is deleted: restore it or pass another experiment name"
        )
    return experiment.experiment_id


class RegistryGateway:
    """Registry reads that answer None for "absent" and tag writes that clip their values.

    Args:
        client: the registry client (default: ``MlflowClient()`` from the environment).
    """

    def __init__(self, client: MlflowClient | None = None):
        self.client = client or MlflowClient()

    # ----------------------------------------------------------------------- reads
    def registered_model(self, name: str) -> RegisteredModel | None:
        """Registered model ``name``, or None when it does not exist."""
        return self._or_none(self.client.get_registered_model, name)

    def model_version(self, name: str, version: str) -> ModelVersion | None:
        """Version ``version`` of ``name``, or None when the model or the version does not exist."""
        return self._or_none(self.client.get_model_version, name, str(version))

    def registered_models(self) -> list[RegisteredModel]:
        """Every registered model, all pages."""
        return list(paged(self.client.search_registered_models, max_results=1000))

    def model_versions(self, name: str) -> list[ModelVersion]:
        """Every version of registered model ``name`` (one search)."""
        return list(self.client.search_model_versions(f"name='{name}'"))

    def versions_in_stage(self, name: str, stage: str) -> list[ModelVersion]:
        """Versions of ``name`` in legacy ``stage``, newest first (what get_latest_versions
        would pick comes first)."""
        found = [mv for mv in self.model_versions(name) if mv.current_stage == stage]
        return sorted(found, key=lambda mv: int(mv.version), reverse=True)

    def newest_in_stage(self, name: str, stage: str) -> ModelVersion | None:
        """The newest version of ``name`` in ``stage``, None when the stage is empty."""
        versions = self.versions_in_stage(name, stage)
        return versions[0] if versions else None

    def wait_until_ready(self, name: str, version: str, timeout_s: float = 300) -> None:
        """Wait until a new version's artifacts are registered (status READY).

        Raises:
            DeployPluginError: the registration failed or took longer than ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            mv = self.client.get_model_version(name, version)
            if mv.status == "READY":
                return
            if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise DeployPluginError(
                    f"{name} v{version} did not become READY (status {mv.status})"
                )
            time.sleep(0.5)

    # ----------------------------------------------------------------------- writes
    def set_version_tags(
        self, name: str, version: str, tags: Mapping[str, object], *, best_effort: bool = False
    ) -> bool:
        """Write ``tags`` on a model version, each value clipped to what MLflow stores.

        Args:
            name: registered model name.
            version: its version.
            tags: key -> value (values are turned into text).
            best_effort: log a warning instead of raising when the registry refuses.

        Returns:
            True when every tag was written.
        """
        try:
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, tag_keys.clip(value))
        except MlflowException as e:
            if not best_effort:
                raise
            _logger.warning("Could not tag %s v%s: %s", name, version, e)
            return False
        return True

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        """Remove tag ``key`` from a model version; a tag that is not there is nothing to do."""
        with contextlib.suppress(MlflowException):
            self.client.delete_model_version_tag(name, str(version), key)

    def delete_model_tag(self, name: str, key: str) -> None:
        """Remove tag ``key`` from a registered model; a tag that is not there is nothing to do."""
        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_tag(name, key)

    def tag_source_failed(self, name: str, version: str, error: object) -> None:
        """Mark a source version failed with the reason (and the parity figures of a failed gate).

        Best effort: the original error matters more than a failed tag write.

        Args:
            name: the source's registered model name.
            version: the source version.
            error: the exception (a ``ParityError`` carries its report) or the reason as text.
        """
        tags = {
            tag_keys.STATUS: tag_keys.STATUS_FAILED,
            tag_keys.ERROR: error_message(error),
        }
        report = getattr(error, "report", None)
        if report is not None:
            tags.update(tag_keys.parity_tags(report))
        self.set_version_tags(name, version, tags, best_effort=True)

    # ----------------------------------------------------------------------- helpers
    @staticmethod
    def _or_none(read: Callable[..., T], *args: str) -> T | None:
        try:
            return read(*args)
        except MlflowException as e:
            if not is_not_found(e):
                raise
            return None
