"""The mlserver target's ``-C mode=docker`` and the routing of its calls between the modes.

Docker mode runs one hardened MLServer container per deployment: ``DockerTarget`` (the same
build, container spec and rollout as onnx-docker) with the ``MLSERVER`` image recipe and
:func:`mlserver_environment`, which hands MLServer the settings local mode would write (same
code). Local and remote deployments are models in a repository (``MlserverTarget``); docker ones
are containers, read back from their labels. :class:`MlserverDeployments` sends each call to the
mode that holds the name.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_deploy_plugins.core.constants import (
    MLSERVER_BUNDLE_LINK,
    MLSERVER_MODEL_ENV,
    MLSERVER_SETTINGS_ENV,
    MLSERVER_TAKEOVER_ENV,
)
from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import _deployments, _mlserver_process
from mlflow_deploy_plugins.targets._mlserver_repo import model_settings

_logger = logging.getLogger(__name__)

DOCKER = "docker"
#: -C keys that only mean something in one mode (given in another, they are refused).
MODE_KEYS = {
    "url": ("remote",),
    **{
        key: (DOCKER,)
        for key in (
            "network_mode",
            "base_image",
            "user",
            "memory",
            "cpus",
            "restart_policy",
            "python_version",
            "platform",
            "wheel_cache",
            "image_repository",
            "rebuild",
        )
    },
}


def mlserver_environment(
    cfg, port: int, *, container_port: int, takeover: int | None = None, deployment: str
) -> dict[str, str]:
    """The environment of one MLServer container (read by ``mlserver_serve``).

    Args:
        cfg: the target config.
        port: the host port.
        container_port: where MLServer listens in bridge network mode.
        takeover: host mode, same port: the HTTP socket count of the server this one replaces
            (the new one steers every new connection to itself once its model is loaded).
        deployment: the deployment's name, MLServer's model name.

    Returns:
        settings.json and model-settings.json (JSON text) and the takeover, by variable.
    """
    host_mode = cfg.network_mode == "host"
    # the entrypoint writes the repository (under /tmp) and sets its root
    settings = _mlserver_process.server_settings(cfg, Path("."))
    del settings["model_repository_root"]
    settings.update(
        host=cfg.host if host_mode else "0.0.0.0", http_port=port if host_mode else container_port
    )
    model = model_settings(deployment, MLSERVER_BUNDLE_LINK, cfg, root_invocations=True)
    env = {
        MLSERVER_SETTINGS_ENV: json.dumps(settings, sort_keys=True),
        MLSERVER_MODEL_ENV: json.dumps(model, sort_keys=True),
    }
    if host_mode and takeover:
        env[MLSERVER_TAKEOVER_ENV] = str(takeover)
    return env


def check_mode_keys(mode: str, config: dict | None, target: str) -> None:
    """Refuse -C keys that the chosen mode would ignore.

    Raises:
        InvalidInputError: naming the keys and the modes they belong to.
    """
    wrong = {
        key: modes
        for key in (config or {})
        if (modes := MODE_KEYS.get(key.replace("-", "_"))) and mode not in modes
    }
    if wrong:
        shown = ", ".join(f"{k} (mode {'/'.join(m)})" for k, m in sorted(wrong.items()))
        raise InvalidInputError(
            f"Config keys of another mode than {mode} for target '{target}': {shown}; "
            "leave them out or choose that mode with -C mode="
        )


@dataclass
class MlserverDeployments:
    """Every call of the mlserver target, handed to the lifecycle of the deployment's mode."""

    target: str
    config_class: Any
    #: ``MlserverTarget``: local and remote deployments (models in a repository).
    repository: Any
    #: ``DockerTarget`` with the MLServer recipe: docker deployments (containers).
    containers: Any

    @property
    def root(self) -> Path:
        """The model repository of the local and remote deployments (the target URI's)."""
        return self.repository.root

    def create_deployment(self, name, model_uri, flavor=None, config=None) -> dict:
        """Create ``name`` in the mode ``-C mode`` asks for (see the lifecycles' docstrings)."""
        cfg = self.config_class.from_config(config)
        check_mode_keys(cfg.mode, config, self.target)
        _deployments.validate_name(name)
        if self._container_of(name) is not None:
            raise self._exists(name, DOCKER)
        if cfg.mode != DOCKER:
            return self.repository.create_deployment(name, model_uri, flavor, config)
        if self.repository.repository.record(name) is not None:
            raise self._exists(name, "local/remote")
        if cfg.network_mode == "host":  # MLServer's other ports are the host's too
            keys = ("grpc_port", "metrics_port") if cfg.metrics else ("grpc_port",)
            settings = _mlserver_process.server_settings(cfg, Path("."))
            _mlserver_process.check_ports(cfg.host, settings, self.target, keys)
        return self.containers.create_deployment(name, model_uri, flavor, config)

    def update_deployment(self, name, model_uri=None, flavor=None, config=None) -> dict:
        """Update ``name`` in its mode; the mode cannot change."""
        record = self.repository.repository.record(name)
        if record is not None:
            check_mode_keys(record.get("config", {}).get("mode", "local"), config, self.target)
            return self.repository.update_deployment(name, model_uri, flavor, config)
        self._known_container(name)
        cfg = self.config_class.from_config(config)
        if "mode" in (config or {}) and cfg.mode != DOCKER:
            raise InvalidInputError(
                f"Deployment '{name}' is in mode docker; mode cannot change on update "
                "(delete and create it again)"
            )
        check_mode_keys(DOCKER, config, self.target)
        return self.containers.update_deployment(name, model_uri, flavor, config)

    def delete_deployment(self, name, config=None) -> None:
        """Delete ``name`` wherever it is; no error when it is nowhere."""
        if self.repository.repository.record(name) is not None:
            self.repository.delete_deployment(name, config)
            return
        cfg = self.config_class.from_config(config)
        if cfg.mode == DOCKER or self._docker_answers():
            self.containers.delete_deployment(name, config)

    def list_deployments(self) -> list[dict]:
        """The repository's deployments, then the docker ones (when an engine answers)."""
        found = self.repository.list_deployments()
        if self._docker_answers():
            found += self.containers.list_deployments()
        return found

    def get_deployment(self, name) -> dict:
        """``name`` as ``list_deployments`` describes it (RESOURCE_DOES_NOT_EXIST: nowhere)."""
        if self.repository.repository.record(name) is not None:
            return self.repository.get_deployment(name)
        return self._known_container(name)

    def predict(self, deployment_name, inputs):
        """Score ``inputs`` on the deployment (see the lifecycles' ``predict``)."""
        if self.repository.repository.record(deployment_name) is not None:
            return self.repository.predict(deployment_name, inputs)
        self._known_container(deployment_name)
        return self.containers.predict(deployment_name, inputs)

    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: a local MLServer, or with ``-C mode=docker`` its container."""
        cfg = self.config_class.from_config(config)
        check_mode_keys(cfg.mode, config, self.target)
        lifecycle = self.containers if cfg.mode == DOCKER else self.repository
        lifecycle.serve_foreground(name, model_uri, flavor, config)

    # ------------------------------------------------------------------------------ helpers
    def _docker_answers(self) -> bool:
        """Whether docker deployments can be read (the SDK installed, an engine answering)."""
        if importlib.util.find_spec("docker") is None:
            return False
        try:
            self.containers.docker()
        except _deployments.EngineUnavailableError as e:
            _logger.warning("Docker-mode deployments of %s not read: %s", self.target, e.message)
            return False
        return True

    def _container_of(self, name) -> dict | None:
        """The docker deployment ``name``, None when there is none or no engine answers."""
        if not self._docker_answers():
            return None
        try:
            return self.containers.get_deployment(name)
        except _deployments.DeploymentNotFoundError:
            return None

    def _known_container(self, name) -> dict:
        """The docker deployment ``name``, called once the repository has no record of it.

        Raises:
            DeploymentNotFoundError: in no mode, naming where it was looked for.
        """
        found = self._container_of(name)
        if found is not None:
            return found
        docker = (
            "no docker-mode container either"
            if self._docker_answers()
            else "docker-mode deployments not checked: no Docker engine answers"
        )
        raise _deployments.DeploymentNotFoundError(
            f"No deployment named '{name}' on {self.target} (repository "
            f"{self.root}; deployments there: "
            f"{', '.join(self.repository.repository.names()) or 'none'}; {docker})"
        )

    def _exists(self, name, mode) -> AlreadyExistsError:
        return AlreadyExistsError(
            f"Deployment '{name}' already exists on {self.target} (mode {mode}): update it "
            "(mlflow deployments update) or delete it first"
        )
