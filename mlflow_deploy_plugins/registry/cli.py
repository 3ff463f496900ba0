"""Click commands of the promotion automation: ``webhooks serve|register`` and ``watch``.

Exported as ``webhooks_group`` and ``watch_command`` for the main ``mlflow-deploy`` group.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

from mlflow_deploy_plugins.console import fail, setup_logging
from mlflow_deploy_plugins.registry.defaults import (
    DEFAULT_EVENTS,
    DEFAULT_WEBHOOK_NAME,
    DELIVERY_LOG_ENV,
    SECRET_ENV,
)

_logger = logging.getLogger(__name__)

_SELECTION_OPTIONS = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Automation config (YAML or TOML): models, aliases/stages, trust_pickle, "
        "deployments. Without it, --model names the models (alias 'champion', no pickle).",
    ),
    click.option(
        "--model",
        "models",
        multiple=True,
        help="Registered model name or glob pattern (repeatable; '*' for every model); "
        "replaces the config's models.",
    ),
    click.option(
        "--alias",
        "aliases",
        multiple=True,
        help="Alias that means 'promoted' (repeatable); replaces the config's aliases.",
    ),
    click.option(
        "--stage",
        "stages",
        multiple=True,
        type=click.Choice(["Staging", "Production", "Archived"]),
        help="Legacy stage that means 'promoted' (repeatable); replaces the config's stages.",
    ),
    click.option(
        "--interval",
        type=click.FloatRange(min=0.1),
        default=60.0,
        show_default=True,
        help="Seconds between reconcile passes (registry vs ONNX twins).",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=4,
        show_default=True,
        help="Models processed in parallel (one model's promotions always run in order).",
    ),
]


def _selection_options(func):
    for option in reversed(_SELECTION_OPTIONS):
        func = option(func)
    return func


def _load(config_path, models, aliases, stages):
    from mlflow_deploy_plugins.registry.automation_config import load_config

    return load_config(config_path).with_overrides(models, aliases, stages).check_scope()


def _fail(error: Exception) -> NoReturn:
    # imported when needed: the main CLI imports this module to build its help

    fail(error)


def _ensure_logging() -> None:
    """INFO logs when run outside ``mlflow-deploy`` (which configures logging itself)."""

    setup_logging()  # a no-op for the handlers when ``mlflow-deploy`` configured them already


@click.group("webhooks")
def webhooks_group() -> None:
    """Receive MLflow registry webhooks: setting an alias converts, gates and deploys.

    \b
    export MLFLOW_DEPLOY_WEBHOOK_SECRET=...    # shared with the MLflow webhook
    mlflow-deploy webhooks serve --port 8787 --config automation.yaml
    mlflow-deploy webhooks register --url http://127.0.0.1:8787/webhook
    """


@webhooks_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=8787, show_default=True, help="Port to bind.")
@click.option(
    "--secret",
    envvar=SECRET_ENV,
    required=True,
    help=f"Webhook secret (prefer the {SECRET_ENV} environment variable).",
)
@click.option(
    "--delivery-log",
    envvar=DELIVERY_LOG_ENV,
    default=None,
    help="File keeping delivery ids across restarts (a replay inside the window is refused "
    "after a restart too). Default: ~/.local/state/mlflow-deploy/webhook-deliveries.txt.",
)
@_selection_options
def serve_command(
    host, port, secret, delivery_log, config_path, models, aliases, stages, interval, workers
):
    """Run the webhook receiver (and a reconcile pass at start and every --interval)."""
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.registry.webhooks import serve

    _ensure_logging()
    try:
        config = _load(config_path, models, aliases, stages)
        serve(
            config,
            secret,
            host=host,
            port=port,
            interval=interval,
            workers=workers,
            delivery_log=delivery_log,
        )
    except MlflowException as e:
        _fail(e)


@webhooks_group.command("register")
@click.option(
    "--url", required=True, help="The receiver's URL, e.g. http://127.0.0.1:8787/webhook."
)
@click.option(
    "--secret",
    envvar=SECRET_ENV,
    required=True,
    help=f"Signing secret (prefer the {SECRET_ENV} environment variable).",
)
@click.option(
    "--events",
    multiple=True,
    default=DEFAULT_EVENTS,
    show_default=True,
    help="MLflow webhook events (repeatable).",
)
@click.option(
    "--name",
    default=DEFAULT_WEBHOOK_NAME,
    show_default=True,
    help="Webhook name; an existing webhook of that name is updated.",
)
@click.option(
    "--test", "send_test", is_flag=True, help="Ask the server to send a test delivery now."
)
def register_command(url, secret, events, name, send_test):
    """Create the MLflow webhook that calls the receiver (MlflowClient.create_webhook).

    The tracking server comes from MLFLOW_TRACKING_URI; it must run with a SQL backend and, for
    an http or private-address URL, MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and
    MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.registry.webhooks import register_webhook

    try:
        webhook = register_webhook(url, secret, events=events, name=name)
        click.echo(
            f"Webhook {webhook.webhook_id} ({webhook.name}) -> {webhook.url}: "
            + ", ".join(str(e) for e in webhook.events)
        )
        click.echo(
            "The server picks it up within MLFLOW_WEBHOOK_CACHE_TTL seconds (60 by default); "
            "the receiver's reconcile pass covers the gap."
        )
        if send_test:
            from mlflow.tracking import MlflowClient

            result = MlflowClient().test_webhook(webhook.webhook_id)
            if not result.success:
                _fail(
                    RuntimeError(
                        f"test delivery failed: {result.response_status or ''} "
                        f"{result.error_message or result.response_body or ''}".strip()
                    )
                )
            click.echo(f"Test delivery answered {result.response_status}.")
    except MlflowException as e:
        _fail(e)


@click.command("watch")
@_selection_options
@click.option(
    "--once", is_flag=True, help="One pass, wait for its work, exit (1 on a failure or refusal)."
)
def watch_command(config_path, models, aliases, stages, interval, workers, once):
    """Poll the registry and promote (and deploy) what moved: for backends without webhooks.

    \b
    mlflow-deploy watch --model churn --alias champion [--stage Production] --interval 30
    mlflow-deploy watch --config automation.yaml --once        # cron / CI

    State lives in the registry (tags, aliases) and the audit runs: a restart does no work twice.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.registry.watch import watch

    _ensure_logging()
    try:
        config = _load(config_path, models, aliases, stages)
        outcomes = watch(config, interval=interval, once=once, workers=workers)
    except MlflowException as e:
        _fail(e)
    if once:
        for outcome in outcomes:
            click.echo(
                f"{outcome.slot}: {outcome.result}"
                + (f" (ONNX v{outcome.onnx_version})" if outcome.onnx_version else "")
                + (f": {outcome.reason}" if outcome.reason else "")
            )
        if not outcomes:
            click.echo("Everything is up to date.")
        if any(not o.ok for o in outcomes):
            sys.exit(1)
