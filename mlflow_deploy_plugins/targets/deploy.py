"""Create-or-update a deployment through MLflow's public deployments API (any target plugin)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mlflow.exceptions import MlflowException

from mlflow_deploy_plugins.registry.gateway import is_not_found

_logger = logging.getLogger(__name__)


def deploy_model(target: str, name: str, model_uri: str, config: Mapping[str, str]) -> str:
    """Create deployment ``name`` on ``target``, or update it when it exists.

    The target plugin does the work, reached through ``mlflow.deployments.get_deploy_client``,
    so any installed target (ours or not) can be an automation's deployment.

    Args:
        target: deployment target name (``onnx-docker``, ...).
        name: the deployment's name on that target.
        model_uri: the model to serve.
        config: the target's ``-C key=value`` settings.

    Returns:
        ``created``, ``updated``, or ``unchanged`` when it already serves ``model_uri``.
    """
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client(target)
    try:
        existing = client.get_deployment(name)
    except MlflowException as e:
        if not is_not_found(e):
            raise
        existing = None
    if not existing:
        client.create_deployment(name, model_uri, config=dict(config))
        return "created"
    if existing.get("model_uri") == model_uri:
        return "unchanged"
    client.update_deployment(name, model_uri=model_uri, config=dict(config))
    return "updated"
