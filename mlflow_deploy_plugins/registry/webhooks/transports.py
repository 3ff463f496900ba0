"""The receiver on the wire: standalone on the package's HTTP server (:func:`serve`) or as a plain
ASGI app (:func:`make_asgi_app`), each running the pipeline and the reconcile loop alongside."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.registry.automation_config import AutomationConfig, load_config
from mlflow_deploy_plugins.registry.defaults import SECRET_ENV, default_delivery_log
from mlflow_deploy_plugins.registry.pipeline import Pipeline, start_preload
from mlflow_deploy_plugins.registry.watch import DEFAULT_INTERVAL_S, Reconciler
from mlflow_deploy_plugins.registry.webhooks.receiver import Reply, WebhookReceiver
from mlflow_deploy_plugins.serving.errors import PayloadTooLarge

_logger = logging.getLogger(__name__)

CONFIG_ENV = "MLFLOW_DEPLOY_AUTOMATION_CONFIG"
MAX_BODY_BYTES = 1024 * 1024

AsgiApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Any]


class AutomationService:
    """The pipeline, the receiver and the reconcile loop (a pass at start, then every
    ``interval`` seconds) that catches what deliveries missed.

    Args:
        config: which models, aliases/stages, options and deployments.
        secret: the secret shared with the MLflow webhook.
        interval: seconds between reconcile passes.
        client: registry client (default: ``MlflowClient()`` from the environment).
        workers: models processed at the same time.
        delivery_log: the file keeping delivery ids across restarts (default:
            :func:`~mlflow_deploy_plugins.registry.defaults.default_delivery_log`).
    """

    def __init__(
        self,
        config: AutomationConfig,
        secret: str,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        client: MlflowClient | None = None,
        workers: int = 4,
        delivery_log: str | None = None,
    ):
        self.pipeline = Pipeline(config, client=client, workers=workers)
        log = delivery_log or default_delivery_log()
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
        self.receiver = WebhookReceiver(self.pipeline, secret, delivery_log=log)
        self.reconciler = Reconciler(self.pipeline, event="reconcile")
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the reconcile loop (idempotent)."""
        with self._lock:
            if self._thread is None:
                start_preload()
                self._thread = threading.Thread(
                    target=self._loop, name="mlflow-deploy-reconcile", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reconciling, let running work finish (bounded), release the workers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.pipeline.drain(timeout):
            _logger.warning("Stopping with promotions still running")
        self.pipeline.close(wait=False)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconciler.run_once()
                self.receiver.last_reconcile = time.time()
            except Exception:  # registry down, bad credentials...: retry next interval
                _logger.exception("Reconcile pass failed; retrying in %.0f s", self.interval)
            self._stop.wait(self.interval)


# --------------------------------------------------------------------------- standalone server
def serve(
    config: AutomationConfig,
    secret: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    interval: float = DEFAULT_INTERVAL_S,
    workers: int = 4,
    delivery_log: str | None = None,
) -> None:
    """Run the receiver on ``host:port`` until SIGTERM/SIGINT (blocking)."""
    from mlflow_deploy_plugins.serving.http import HttpLimits, Response, shutdown, start_server

    service = AutomationService(
        config, secret, interval=interval, workers=workers, delivery_log=delivery_log
    )

    def handler(request) -> Response:
        reply = service.receiver.handle(
            request.method,
            request.headers,
            request.body,
            path=request.path,
            client=request.remote.rsplit(":", 1)[0],
        )
        return Response(reply.status, reply.body)

    async def main() -> None:
        server = await start_server(
            handler, host, port, limits=HttpLimits(max_body_bytes=MAX_BODY_BYTES)
        )
        bound = server.sockets[0].getsockname()[1]
        _logger.info(
            "Webhook receiver on http://%s:%d/webhook (liveness: GET /health; counters: GET "
            "/stats from this host or with the secret as bearer token)",
            host,
            bound,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service.start()
        await stop.wait()
        await shutdown(server, timeout=5)

    try:
        asyncio.run(main())
    finally:
        service.stop()


# --------------------------------------------------------------------------- ASGI
def make_asgi_app(
    config: AutomationConfig,
    secret: str,
    *,
    interval: float = DEFAULT_INTERVAL_S,
    client: MlflowClient | None = None,
    workers: int = 4,
    delivery_log: str | None = None,
) -> AsgiApp:
    """A plain ASGI application (no framework) for users who mount the receiver elsewhere.

    ``POST`` (any path) is a delivery, ``GET`` is liveness (``/stats``: the counters, for local
    clients or with the secret as bearer token). The reconcile loop starts with the ASGI
    lifespan (or at the first request on servers without lifespan) and stops with it.
    """
    service = AutomationService(
        config, secret, interval=interval, client=client, workers=workers, delivery_log=delivery_log
    )

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(service, receive, send)
            return
        if scope["type"] != "http":
            return
        service.start()
        body = await _read_body(receive)
        if body is None:
            too_large = PayloadTooLarge(f"body larger than {MAX_BODY_BYTES} bytes")
            reply = Reply(too_large.status, too_large.to_body())
        else:
            peer = scope.get("client") or (None, None)
            reply = service.receiver.handle(
                scope["method"], _headers(scope), body, path=scope.get("path", "/"), client=peer[0]
            )
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(reply.body)).encode()),
                ],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else reply.body,
            }
        )

    app.service = service  # for tests and health checks from the hosting app
    return app


def app_from_environment() -> AsgiApp:
    """The ASGI app configured from ``MLFLOW_DEPLOY_WEBHOOK_SECRET`` and
    ``MLFLOW_DEPLOY_AUTOMATION_CONFIG`` (``mlflow_deploy_plugins.registry.webhooks:app``)."""
    config = load_config(os.environ.get(CONFIG_ENV)).check_scope()
    return make_asgi_app(config, os.environ.get(SECRET_ENV, ""))


async def _lifespan(service: AutomationService, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            service.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(service.stop)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive) -> bytes | None:
    """The whole request body, None when it exceeds ``MAX_BODY_BYTES`` (read to the end)."""
    body, too_large = bytearray(), False
    while True:
        message = await receive()
        body += message.get("body", b"")
        too_large = too_large or len(body) > MAX_BODY_BYTES
        if too_large:
            body.clear()  # keep reading, keep nothing: the client gets its 413 after its body
        if not message.get("more_body"):
            return None if too_large else bytes(body)


def _headers(scope: dict) -> dict[str, str]:
    """Lower-cased header names; repeated headers joined with ``, `` (as HTTP allows)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
