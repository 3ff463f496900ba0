"""Automation constants the CLI shows in its help: plain values, importable without mlflow."""

from __future__ import annotations

#: The registry events the webhook subscribes to.
DEFAULT_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
DEFAULT_WEBHOOK_NAME = "mlflow-deploy-automation"
#: The environment variable holding the webhook's HMAC secret.
SECRET_ENV = "MLFLOW_DEPLOY_WEBHOOK_SECRET"
