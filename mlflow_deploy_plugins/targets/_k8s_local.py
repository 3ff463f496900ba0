"""``run_local`` of the Kubernetes target: the image the pods would run (built, not pushed),
started on the local Docker engine with the pod's settings and hardening, in the foreground."""

from __future__ import annotations

import logging
import os
import tempfile

from mlflow_deploy_plugins.targets import _container, _deployments, _docker, _rollout
from mlflow_deploy_plugins.targets._images import builder, recipes

_logger = logging.getLogger(__name__)

CONTAINER_PREFIX = "mlflow-deploy-k8s-"


def local_environment(cfg, run: _container.LocalRun) -> dict[str, str]:
    """The pod's serving settings, on ``run.host:run.port`` (host network: no bridge here)."""
    return _container.runtime_environment(
        {
            "host": run.host,
            "port": run.port,
            "workers": cfg.workers,
            "log_level": cfg.log_level,
            "max_batch_size": cfg.max_batch_size,
            "max_batch_time_ms": cfg.max_batch_time_ms,
            "auth_token_file": _container.TOKEN_PATH if cfg.auth_token_file else None,
        }
    )


def serve_foreground(target, name: str, model_uri: str, flavor=None, config=None) -> None:
    """Build (or reuse) the image, run it as the pods would, stream its log until Ctrl+C.

    Args:
        target: the ``KubernetesTarget`` (its config class, recipe, docker client, progress).
        name: names the local container.
        model_uri: the model.
        flavor: must be an ONNX-serving flavor or None.
        config: the ``-C`` values (``local_port``, the runtime and image keys, ``image``).
    """
    _deployments.validate_name(name)
    _deployments.check_flavor(flavor, target.target)
    cfg = target.config_class.from_config(config)
    run = _container.LocalRun(
        cfg.local_port,
        "host",
        cfg.rollout_timeout,
        user=cfg.user,
        workers=cfg.workers,
        stop_timeout=cfg.stop_timeout,
        auth_token_file=cfg.auth_token_file,
    )
    client = target.docker()
    _docker.check_port(client, run.host, run.port)
    _container.prepare_host_paths(run)
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-k8s-") as work:
        resolved = _deployments.resolve_model(model_uri, os.path.join(work, "bundle"))
        image = (
            cfg.image
            or builder.ensure_image_for(
                client,
                resolved,
                cfg,
                recipe=target.recipe,
                repository=cfg.image_repository,
                progress=target.progress,
            ).tag
        )
    options = _container.container_options(
        run, run.port, local_environment(cfg, run), container_port=recipes.CONTAINER_PORT
    )
    _rollout.serve_image_foreground(
        target,
        name,
        resolved,
        image,
        run,
        options,
        container_prefix=CONTAINER_PREFIX,
        remembered=cfg.remembered(),
        serving_as="as its pods would",
    )
