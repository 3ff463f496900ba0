"""The lifecycle of a Docker target (create, update, delete, list, get, predict, run-local) for
one target config class and one image recipe; the target's client delegates every call here."""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlflow_deploy_plugins.errors import AlreadyExistsError, InvalidInputError
from mlflow_deploy_plugins.targets import (
    _container,
    _deployments,
    _docker,
    _endpoints,
    _predict,
    _rollout,
    _swarm,
)
from mlflow_deploy_plugins.targets._endpoints import endpoint_url
from mlflow_deploy_plugins.targets._images import builder, recipes
from mlflow_deploy_plugins.targets._images.recipes import Recipe

_logger = logging.getLogger(__name__)

#: ``(cfg, host port, container_port=, takeover=, deployment=) -> the container's environment``.
Environment = Callable[..., dict[str, str]]


class DockerTargetConfig(_container.ContainerConfig, Protocol):
    """The ``-C`` keys a Docker target's config class declares (besides the container keys)."""

    base_image: str
    image_repository: str | None
    python_version: str | None
    platform: str | None
    wheel_cache: str | None
    rebuild: bool
    remove_image: bool

    def remembered(self) -> dict[str, Any]:
        """The keys kept on the container (update starts from them)."""
        ...


@dataclass
class DockerTarget:
    """Deployments of one target on one Docker engine (see the module docstring)."""

    target: str
    flavor: str
    #: A ``TargetConfig`` subclass whose instances are :class:`DockerTargetConfig`.
    config_class: Any
    recipe: Recipe
    progress: Callable[[str], None]
    #: The engine's URL; None: ``DOCKER_HOST`` or the default socket.
    base_url: str | None = None
    container_prefix: str = "mlflow-deploy-"
    #: What the image's server is told; the default suits this package's serving runtime.
    environment: Environment = _container.serving_environment
    #: The model name of the V2 route: the deployment's (True) or the served model's.
    model_named_after_deployment: bool = False
    #: The docker SDK client, connected on first use.
    client: Any = field(default=None, repr=False)

    def create_deployment(
        self, name: str, model_uri: str, flavor: str | None = None, config: dict | None = None
    ) -> dict:
        """Build the image of ``model_uri`` and run it; blocks until the readiness probe passes.

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS for an existing name; INVALID_PARAMETER_VALUE
                for bad config or a port in use (checked before building);
                RESOURCE_DOES_NOT_EXIST for an unknown model; INTERNAL_ERROR with the
                container's last log lines when it does not become ready (nothing is left).
        """
        _deployments.validate_name(name)
        _deployments.check_flavor(flavor, self.target)
        cfg = self.config_class.from_config(config)
        client = self.docker()
        replicated = bool(getattr(cfg, "replicas", None))
        if replicated:
            _swarm.check_manager(client, self.target)
        if _docker.deployment_containers(client, self.target, name) or (
            _swarm.deployment_services(client, self.target, name)
        ):
            raise AlreadyExistsError(
                f"Deployment '{name}' already exists on {self.target}: update it "
                "(mlflow deployments update) or delete it first"
            )
        self._check_port(cfg)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri, cfg)
        try:
            if replicated:
                spec = self._service_spec(name, cfg, resolved, image)
                deployed, seconds = self._swarm_of(name).create(image.tag, spec, cfg)
            else:
                deployed, seconds = self._rollout_of(name, cfg, resolved, image).create(cfg)
        except BaseException:
            if not image.cached:
                _docker.remove_image(client, image.tag)
            raise
        self.progress(
            f"Deployment '{name}' ready in {seconds:.2f} s at "
            f"{endpoint_url(cfg.host, cfg.port)} ({resolved.lineage()})"
        )
        return self._describe(deployed)

    def update_deployment(
        self,
        name: str,
        model_uri: str | None = None,
        flavor: str | None = None,
        config: dict | None = None,
    ) -> dict:
        """Roll ``name`` to ``model_uri`` (default: its model URI, re-resolved) and/or new config.

        The new container must pass readiness before the old one is stopped (gracefully:
        in-flight requests finish, the payload log is flushed); if it does not, it is removed,
        the old one keeps serving and the error carries the new container's last log lines.
        In host network mode both share the port (SO_REUSEPORT): no request fails. In bridge
        mode on the same port the new version is first proven on a scratch port; the switch
        then refuses connections for about a second, and rolls back if the new one fails.
        """
        _deployments.check_flavor(flavor, self.target)
        self.config_class.from_config(config)  # bad keys/values fail before Docker is asked
        client = self.docker()
        services = _swarm.deployment_services(client, self.target, name)
        if services:
            return self._update_service(name, services[0], model_uri, config)
        containers = _docker.deployment_containers(client, self.target, name)
        old = _docker.current(containers, self.container_prefix + name)
        if old is None:
            raise _deployments.DeploymentNotFoundError(
                f"No deployment named '{name}' on {self.target}"
            )
        for leftover in containers:  # from an interrupted update
            if leftover.id != old.id:
                _docker.remove(leftover)
        old_cfg = self.config_class.from_config(_container.remembered_config(old))
        cfg = self.config_class.from_config({**old_cfg.remembered(), **(config or {})})
        if getattr(cfg, "replicas", None):
            raise InvalidInputError(
                f"'{name}' runs as one container: -C replicas cannot be added by an update; "
                "delete it and create it again with -C replicas=N"
            )
        model_uri = model_uri or old.labels[_deployments.LABEL_MODEL_URI]
        plan = _rollout.plan_update(name, old_cfg, cfg, _docker.status(old) == "running")
        if plan.check_port:
            self._check_port(cfg, deployment=name)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri, cfg)
        old_image = old.labels.get(_deployments.LABEL_IMAGE)
        self.progress(
            f"Updating '{name}': {old.labels.get(_deployments.LABEL_SERVED_NAME)} "
            f"v{old.labels.get(_deployments.LABEL_SERVED_VERSION)} -> {resolved.lineage()}"
        )
        rollout = self._rollout_of(name, cfg, resolved, image)
        try:
            new = rollout.replace(old, old_cfg, cfg, plan)
        except BaseException:
            if not image.cached and image.tag != old_image:
                _docker.remove_image(client, image.tag)
            raise
        rollout.retire(old, old_cfg)
        rollout.settle(new)
        if cfg.remove_image and old_image and old_image != image.tag:
            _docker.remove_image(client, old_image)
        self.progress(f"Deployment '{name}' now serves {resolved.lineage()}")
        return self._describe(new)

    def delete_deployment(self, name: str, config: dict | None = None) -> None:
        """Stop (gracefully) and remove the container(s) of ``name``; no error when absent.
        ``-C remove_image=true`` also removes the image."""
        cfg = self.config_class.from_config(config)
        client = self.docker()
        images = set()
        for container in _docker.deployment_containers(client, self.target, name):
            images.add(
                container.labels.get(_deployments.LABEL_IMAGE) or container.attrs.get("Image")
            )
            timeout = cfg.stop_timeout if "stop_timeout" in (config or {}) else None
            remembered = _container.remembered_config(container).get(
                "stop_timeout", cfg.stop_timeout
            )
            _docker.stop(container, timeout or remembered)
            _docker.remove(container)
            self.progress(f"Deployment '{name}': container {container.name} removed")
        for service in _swarm.deployment_services(client, self.target, name):
            images.add(_swarm.labels(service).get(_deployments.LABEL_IMAGE))
            stop_timeout = _container.remembered_config_of(_swarm.labels(service)).get(
                "stop_timeout", cfg.stop_timeout
            )
            self._swarm_of(name).remove(service, stop_timeout)
            self.progress(f"Deployment '{name}': service {service.name} removed")
        if cfg.remove_image:
            for image in filter(None, images):
                if _docker.remove_image(client, image):
                    self.progress(f"Deployment '{name}': image {image} removed")

    def list_deployments(self) -> list[dict]:
        """Every deployment of this target on the engine, read from container labels."""
        groups: dict[str, list] = {}
        for container in _docker.deployment_containers(self.docker(), self.target):
            groups.setdefault(container.labels[_deployments.LABEL_DEPLOYMENT], []).append(container)
        found = {
            name: _docker.current(group, self.container_prefix + name)
            for name, group in groups.items()
        }
        for service in _swarm.deployment_services(self.docker(), self.target):
            found[_swarm.labels(service)[_deployments.LABEL_DEPLOYMENT]] = service
        return [self._describe(found[name]) for name in sorted(found)]

    def get_deployment(self, name: str) -> dict:
        """The deployment ``name`` as ``list_deployments`` describes it.

        Raises:
            MlflowException: RESOURCE_DOES_NOT_EXIST when there is none.
        """
        services = _swarm.deployment_services(self.docker(), self.target, name)
        if services:
            return self._describe(services[0])
        containers = _docker.deployment_containers(self.docker(), self.target, name)
        container = _docker.current(containers, self.container_prefix + name)
        if container is None:
            raise _deployments.DeploymentNotFoundError(
                f"No deployment named '{name}' on {self.target}"
            )
        return self._describe(container)

    def predict(self, deployment_name: str, inputs: Any):
        """Score ``inputs`` (a DataFrame, a dict in MLflow's or the V2 protocol's JSON format, a
        list of records or a numpy array) on the deployment; returns ``{"predictions": ...}``
        for MLflow inputs, the V2 response for V2 inputs."""
        info = self.get_deployment(deployment_name)
        if info["status"] != "running":
            raise _deployments.DeploymentError(
                f"Deployment '{deployment_name}' is {info['status']}, not running"
            )
        return _predict.predict(
            deployment_name,
            info["endpoint_url"],
            inputs,
            served_model=deployment_name
            if self.model_named_after_deployment
            else info["served_model"],
            auth_token_file=info["config"].get("auth_token_file"),
        )

    def serve_foreground(
        self, name: str, model_uri: str, flavor: str | None = None, config: dict | None = None
    ) -> None:
        """``run_local``: build, run, stream the server's log until Ctrl+C, then remove."""
        _deployments.validate_name(name)
        _deployments.check_flavor(flavor, self.target)
        cfg = self.config_class.from_config({"restart_policy": "no", **(config or {})})
        _docker.check_port(self.docker(), cfg.host, cfg.port)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri, cfg)
        local_name = f"{self.container_prefix}local-{name}-{uuid.uuid4().hex[:6]}"
        rollout = self._rollout_of(name, cfg, resolved, image, local=True)

        def start():
            container, _ = rollout.create(cfg, container_name=local_name, what=f"'{name}'")
            self.progress(
                f"Serving '{name}' ({resolved.lineage()}) at "
                f"{endpoint_url(cfg.host, cfg.port)}; Ctrl+C stops it"
            )
            return container

        _docker.run_foreground(start, name, cfg.stop_timeout, self.progress)

    def docker(self):
        """The docker SDK client, connected (and pinged) on first use."""
        if self.client is None:
            self.client = _docker.connect(self.base_url, self.target)
        return self.client

    def _build(self, model_uri: str, cfg):
        """The model's bundle (in a scratch directory: it only has to outlive the build) and
        its image."""
        with tempfile.TemporaryDirectory(prefix="mlflow-deploy-") as work:
            resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
            return resolved, self._image(resolved, cfg)

    def _image(self, resolved: _deployments.ResolvedModel, cfg) -> builder.BuiltImage:
        return builder.ensure_image_for(
            self.docker(),
            resolved,
            cfg,
            recipe=recipes.for_config(self.recipe, cfg),
            repository=cfg.image_repository,
            progress=self.progress,
        )

    def _rollout_of(self, name, cfg, resolved, image, local=False) -> _rollout.ContainerRollout:
        """The rollout of ``name``; its containers run ``image`` with ``cfg``."""

        def start(container_name: str, port: int, takeover: int | None):
            labels = _container.container_labels(
                self.target,
                name,
                resolved,
                host=cfg.host,
                port=port,
                network_mode=cfg.network_mode,
                image=image.tag,
                config=cfg.remembered(),
                local=local,
            )
            port_inside = self.recipe.container_port
            env = self.environment(
                cfg, port, container_port=port_inside, takeover=takeover, deployment=name
            )
            options = _container.container_options(cfg, port, env, container_port=port_inside)
            return _docker.run_container(self.docker(), image.tag, container_name, labels, options)

        return _rollout.ContainerRollout(
            name, self.container_prefix + name, start, self.recipe, self.progress
        )

    def _describe(self, deployed) -> dict:
        """``deployed``: a container, or the swarm service of a replicated deployment."""
        if hasattr(deployed, "tasks"):
            return _swarm.describe_service(
                self.docker(), deployed, target=self.target, flavor=self.flavor
            )
        return _container.describe_container(deployed, target=self.target, flavor=self.flavor)

    def _check_port(self, cfg, deployment: str | None = None) -> None:
        """The port must be free: no container, service or other program holds it."""
        client = self.docker()
        owner = _swarm.port_claim(client, cfg.port, deployment)
        if owner is not None:
            raise InvalidInputError(
                f"Port {cfg.port} is already used by deployment '{owner}' (a swarm service); "
                "choose another with -C port=..."
            )
        _docker.check_port(client, cfg.host, cfg.port, deployment=deployment)
        grpc_port = getattr(cfg, "grpc_port", None)
        if grpc_port and _endpoints.port_in_use(cfg.host, grpc_port) and deployment is None:
            raise InvalidInputError(
                f"gRPC port {grpc_port} on {cfg.host} is already in use; choose another with "
                "-C grpc_port=..."
            )

    # --- replicated deployments (-C replicas=N): a swarm service -----------------------------

    def _swarm_of(self, name: str) -> _swarm.SwarmRollout:
        return _swarm.SwarmRollout(self.docker(), name, self.container_prefix + name, self.progress)

    def _service_spec(self, name, cfg, resolved, image, takeover: int | None = None) -> dict:
        """The service of ``name`` running ``image`` with ``cfg``: the container's labels and
        environment, as the swarm service spec has them."""
        labels = _container.container_labels(
            self.target,
            name,
            resolved,
            host=cfg.host,
            port=cfg.port,
            network_mode=cfg.network_mode,
            image=image.tag,
            config=cfg.remembered(),
        )
        env = self.environment(
            cfg, cfg.port, container_port=self.recipe.container_port, takeover=takeover
        )
        return self._swarm_of(name).spec(cfg, image.tag, labels, env)

    def _update_service(self, name: str, service, model_uri, config) -> dict:
        """A swarm rolling update of a replicated deployment; swarm's verdict decides."""
        old_labels = _swarm.labels(service)
        old_cfg = self.config_class.from_config(_container.remembered_config_of(old_labels))
        cfg = self.config_class.from_config({**old_cfg.remembered(), **(config or {})})
        if not cfg.replicas:
            raise InvalidInputError(f"'{name}' is a replicated deployment: -C replicas stays >= 1")
        _swarm.check_manager(self.docker(), self.target)
        if (cfg.port, cfg.host) != (old_cfg.port, old_cfg.host):
            self._check_port(cfg, deployment=name)
        _container.prepare_host_paths(cfg)
        resolved, image = self._build(model_uri or old_labels[_deployments.LABEL_MODEL_URI], cfg)
        self.progress(
            f"Updating '{name}' ({cfg.replicas} replica(s), one at a time): "
            f"{old_labels.get(_deployments.LABEL_SERVED_NAME)} "
            f"v{old_labels.get(_deployments.LABEL_SERVED_VERSION)} -> {resolved.lineage()}"
        )
        # Each new task steers new connections to itself until the task it replaces is gone
        # (only when every replica has the same socket count as before).
        same_shape = (cfg.workers, cfg.replicas, cfg.port) == (
            old_cfg.workers,
            old_cfg.replicas,
            old_cfg.port,
        )
        takeover = cfg.replicas * cfg.workers if same_shape else None
        spec = self._service_spec(name, cfg, resolved, image, takeover=takeover)
        swarm = self._swarm_of(name)
        try:
            seconds = swarm.update(service, image.tag, spec, cfg)
        except BaseException:
            if not image.cached and image.tag != old_labels.get(_deployments.LABEL_IMAGE):
                _docker.remove_image(self.docker(), image.tag)
            raise
        swarm.remove_secrets(keep=(spec["secrets"][0]["SecretName"] if spec["secrets"] else None))
        old_image = old_labels.get(_deployments.LABEL_IMAGE)
        if cfg.remove_image and old_image and old_image != image.tag:
            _docker.remove_image(self.docker(), old_image)
        self.progress(f"Deployment '{name}' now serves {resolved.lineage()} ({seconds:.1f} s)")
        return self._describe(service)
