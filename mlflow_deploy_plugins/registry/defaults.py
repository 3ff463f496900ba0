"""Automation constants the CLI shows in its help: plain values, importable without mlflow."""

from __future__ import annotations

#: The registry events the webhook subscribes to.
DEFAULT_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
DEFAULT_WEBHOOK_NAME = "mlflow-deploy-automation"
#: The environment variable holding the webhook's HMAC secret.
SECRET_ENV = "MLFLOW_DEPLOY_WEBHOOK_SECRET"
#: The environment variable naming the file that keeps delivery ids across restarts.
DELIVERY_LOG_ENV = "MLFLOW_DEPLOY_WEBHOOK_DELIVERY_LOG"


def default_delivery_log() -> str:
    """``$MLFLOW_DEPLOY_WEBHOOK_DELIVERY_LOG``, else ``$XDG_STATE_HOME`` (``~/.local/state``)
    ``/mlflow-deploy/webhook-deliveries.txt``."""
    import os

    if os.environ.get(DELIVERY_LOG_ENV):
        return os.environ[DELIVERY_LOG_ENV]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "mlflow-deploy", "webhook-deliveries.txt")
