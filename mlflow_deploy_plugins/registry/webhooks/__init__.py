"""MLflow 3 registry webhook receiver: verify, de-duplicate, hand the promotion to the pipeline.

A delivery is answered in microseconds (signature check + enqueue); the conversion runs in the
pipeline's workers, so MLflow never times out and retries. The same receiver runs standalone
(:func:`serve`, on the package's own HTTP server) or mounted in any ASGI server
(:func:`make_asgi_app`). Deliveries only wake the reconciler up: the registry stays the truth.

``receiver`` checks and maps a delivery, ``transports`` puts it on the wire (with the reconcile
loop), ``registration`` creates the MLflow webhook; the names below are the public API.
"""

from __future__ import annotations

import logging

from mlflow_deploy_plugins.registry.webhooks.deliveries import DeliveryLog
from mlflow_deploy_plugins.registry.webhooks.receiver import (
    Reply,
    SignatureVerifier,
    WebhookReceiver,
    WebhookSignatureError,
    sign,
)
from mlflow_deploy_plugins.registry.webhooks.registration import register_webhook
from mlflow_deploy_plugins.registry.webhooks.transports import (
    AsgiApp,
    AutomationService,
    app_from_environment,
    make_asgi_app,
    serve,
)

_logger = logging.getLogger(__name__)

__all__ = [
    "AutomationService",
    "DeliveryLog",
    "Reply",
    "SignatureVerifier",
    "WebhookReceiver",
    "WebhookSignatureError",
    "make_asgi_app",
    "register_webhook",
    "serve",
    "sign",
]


def __getattr__(name: str) -> AsgiApp:
    """``mlflow_deploy_plugins.registry.webhooks:app``: the ASGI app configured from the
    environment (e.g. for uvicorn), built on first access."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = app_from_environment()
    globals()["app"] = app
    return app
