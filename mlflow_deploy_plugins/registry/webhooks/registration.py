"""Create or update the MLflow webhook that calls the receiver (``webhooks register``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mlflow.entities.webhook import Webhook, WebhookEvent
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.registry.defaults import (
    DEFAULT_EVENTS,
    DEFAULT_WEBHOOK_NAME,
    SECRET_ENV,
)
from mlflow_deploy_plugins.registry.gateway import paged

_logger = logging.getLogger(__name__)


def register_webhook(
    url: str,
    secret: str,
    *,
    events: Iterable[str] = DEFAULT_EVENTS,
    name: str = DEFAULT_WEBHOOK_NAME,
    client: MlflowClient | None = None,
) -> Webhook:
    """Create (or update, when one named ``name`` exists) the MLflow webhook to ``url``.

    Args:
        url: the receiver's URL.
        secret: the signing secret (shared with the receiver).
        events: MLflow webhook events to subscribe to.
        name: the webhook's name; an existing webhook of that name is updated.
        client: the tracking client (default: ``MlflowClient()`` from the environment).

    Returns:
        The ``mlflow.entities.webhook.Webhook``. A new webhook reaches the server's delivery
        cache within ``MLFLOW_WEBHOOK_CACHE_TTL`` seconds (60 by default).

    Raises:
        InvalidInputError: no secret, or an event MLflow does not know.
    """
    if not secret:
        raise InvalidInputError(f"A webhook secret is required (--secret or {SECRET_ENV})")
    events = list(events)
    for event in events:
        try:
            WebhookEvent.from_str(event)
        except (MlflowException, ValueError) as e:
            raise InvalidInputError(f"--events: {event!r} is not an MLflow webhook event") from e
    client = client or MlflowClient()
    pages = paged(client.list_webhooks, max_results=100)
    existing = next((w for w in pages if w.name == name), None)
    if existing is not None:
        return client.update_webhook(
            existing.webhook_id, url=url, events=events, secret=secret, status="ACTIVE"
        )
    return client.create_webhook(
        name,
        url,
        events,
        description="mlflow-deploy-plugins promotion automation",
        secret=secret,
    )
