"""MLflow 3 registry webhook receiver: verify, de-duplicate, hand the promotion to the pipeline.

A delivery is answered in microseconds (signature check + enqueue); the conversion runs in the
pipeline's workers, so MLflow never times out and retries. The same receiver runs standalone
(:func:`serve`, on the package's own HTTP server) or mounted in any ASGI server
(:func:`make_asgi_app`). Deliveries only wake the reconciler up: the registry stays the truth.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping

from mlflow.protos.databricks_pb2 import UNAUTHENTICATED
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.errors import DeployPluginError, InvalidInputError
from mlflow_deploy_plugins.registry.automation_config import (
    DEFAULT_EVENTS,
    DEFAULT_WEBHOOK_NAME,
    SECRET_ENV,
    AutomationConfig,
    load_config,
)
from mlflow_deploy_plugins.registry.pipeline import Pipeline, Slot, Trigger, preload_converters
from mlflow_deploy_plugins.registry.watch import DEFAULT_INTERVAL_S, Reconciler

_logger = logging.getLogger(__name__)

# DEFAULT_EVENTS, DEFAULT_WEBHOOK_NAME, SECRET_ENV live with the config (cheap for the CLI).
CONFIG_ENV = "MLFLOW_DEPLOY_AUTOMATION_CONFIG"
#: Deliveries signed longer ago (or further ahead) than this are refused as replays.
REPLAY_WINDOW_S = 300
MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_ID_HEADER = "x-mlflow-delivery-id"
#: Registry events that are not promotions: acknowledged, logged at debug level.
_NOT_PROMOTIONS = {
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
}


class WebhookSignatureError(DeployPluginError):
    """A delivery without a valid, fresh signature (answered 401)."""

    error_code = UNAUTHENTICATED


def sign(secret: str, delivery_id: str, timestamp: str | int, body: bytes) -> str:
    """MLflow's signature header value: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class SignatureVerifier:
    """Checks the three ``X-MLflow-*`` headers against the raw body, in constant time."""

    def __init__(self, secret: str, window_s: float = REPLAY_WINDOW_S, clock=time.time):
        if not secret:
            raise InvalidInputError(f"A webhook secret is required (--secret or {SECRET_ENV})")
        self._secret = secret
        self.window_s = window_s
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Return the delivery id; raise :class:`WebhookSignatureError` otherwise.

        Args:
            headers: request headers with lower-cased names.
            body: the raw request body, exactly as received.
        """
        delivery_id = headers.get(DELIVERY_ID_HEADER, "")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        signatures = headers.get(SIGNATURE_HEADER, "")
        if not (delivery_id and timestamp and signatures):
            raise WebhookSignatureError("unsigned delivery (X-MLflow-* headers missing)")
        try:
            age = self._clock() - int(timestamp)
        except ValueError:
            raise WebhookSignatureError("X-MLflow-Timestamp is not a Unix time") from None
        if abs(age) > self.window_s:
            raise WebhookSignatureError(f"stale delivery: signed {age:.0f} s ago")
        expected = sign(self._secret, delivery_id, timestamp, body).encode()
        # MLflow sends one signature; several (space-separated) would come from a secret rotation.
        valid = False
        for candidate in signatures.split():
            valid |= hmac.compare_digest(candidate.encode(), expected)
        if not valid:
            raise WebhookSignatureError("signature does not match")
        return delivery_id


class DeliveryLog:
    """Delivery ids seen within the replay window (older ones are refused as stale anyway)."""

    def __init__(self, ttl_s: float = 2 * REPLAY_WINDOW_S, max_entries: int = 100_000):
        self._ttl, self._max = ttl_s, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (
                next(iter(self._seen.values())) < now or len(self._seen) >= self._max
            ):
                self._seen.popitem(last=False)
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now + self._ttl
            return True


class WebhookReceiver:
    """Maps one HTTP request to a status and a JSON body; the work goes to ``pipeline``."""

    def __init__(self, pipeline: Pipeline, secret: str, window_s: float = REPLAY_WINDOW_S):
        self.pipeline = pipeline
        self.verifier = SignatureVerifier(secret, window_s)
        self.deliveries = DeliveryLog(2 * window_s)
        self.counts: Counter[str] = Counter()
        self.last_reconcile: float | None = None

    def handle(
        self, method: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, object]]:
        """``POST``: a delivery; ``GET``/``HEAD``: health. Headers have lower-cased names."""
        if method in ("GET", "HEAD"):
            return 200, self.health()
        if method != "POST":
            return 405, {"error": "POST deliveries here; GET for health"}
        try:
            delivery_id = self.verifier.verify(headers, body)
        except WebhookSignatureError as e:
            self.counts["rejected"] += 1
            _logger.warning("Rejected a webhook delivery: %s", e.message)
            return 401, {"error": e.message}
        if not self.deliveries.first_time(delivery_id):
            self.counts["duplicate"] += 1
            _logger.info("Ignoring replayed delivery %s", delivery_id)
            return 200, {"status": "duplicate"}
        try:
            payload = json.loads(body)
            event = f"{payload['entity']}.{payload['action']}"
            data = payload.get("data") or {}
            if not isinstance(data, dict):
                raise TypeError("data is not an object")
        except (ValueError, KeyError, TypeError):
            self.counts["malformed"] += 1
            return 400, {"error": "body is not an MLflow webhook payload {entity, action, data}"}
        trigger, reason = self._trigger(event, data, delivery_id)
        if trigger is None:
            self.counts["ignored"] += 1
            level = logging.DEBUG if event in _NOT_PROMOTIONS else logging.INFO
            subject = f" for {data['name']}" if isinstance(data.get("name"), str) else ""
            _logger.log(
                level, "Ignoring %s%s (delivery %s): %s", event, subject, delivery_id, reason
            )
            return 200, {"status": "ignored", "reason": reason}
        self.pipeline.submit(trigger)
        self.counts["accepted"] += 1
        _logger.info("Accepted %s for %s (delivery %s)", event, trigger.slot, delivery_id)
        return 202, {"status": "accepted", "slot": str(trigger.slot)}

    def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "pending": self.pipeline.pending(),
            "deliveries": dict(self.counts),
            "results": dict(self.pipeline.counts),
            "last_reconcile": self.last_reconcile,
        }

    def _trigger(self, event: str, data: Mapping, delivery_id: str):
        if event not in ("model_version_alias.created", "model_version_alias.deleted"):
            known = event in _NOT_PROMOTIONS
            return None, "not a promotion" if known else "unknown event"
        name, alias = data.get("name"), data.get("alias")
        if not isinstance(name, str) or not isinstance(alias, str):
            return None, "payload without name/alias"
        config = self.pipeline.config
        rule = config.rule_for(name)
        if rule is None:
            reason = "an ONNX twin (ours)" if config.is_twin(name) else "model not in the config"
            return None, reason
        if not rule.watches("alias", alias):
            return None, f"alias '{alias}' is not watched"
        version = data.get("version")
        return Trigger(
            Slot(name, "alias", alias),
            event,
            None if version is None else str(version),
            explicit=event.endswith(".created"),
            delivery_ids=(delivery_id,),
        ), ""


class AutomationService:
    """The pipeline, the receiver and the reconcile loop (a pass at start, then every
    ``interval`` seconds) that catches what deliveries missed."""

    def __init__(
        self,
        config: AutomationConfig,
        secret: str,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        client: MlflowClient | None = None,
        workers: int = 4,
    ):
        self.pipeline = Pipeline(config, client=client, workers=workers)
        self.receiver = WebhookReceiver(self.pipeline, secret)
        self.reconciler = Reconciler(self.pipeline, event="reconcile")
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the reconcile loop (idempotent)."""
        with self._lock:
            if self._thread is None:
                threading.Thread(target=preload_converters, name="preload", daemon=True).start()
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
            except Exception:
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
) -> None:
    """Run the receiver on ``host:port`` until SIGTERM/SIGINT (blocking)."""
    from mlflow_deploy_plugins.serving.http import HttpLimits, Response, shutdown, start_server

    service = AutomationService(config, secret, interval=interval, workers=workers)

    def handler(request) -> Response:
        status, payload = service.receiver.handle(request.method, request.headers, request.body)
        return Response(status, json.dumps(payload).encode())

    async def main() -> None:
        server = await start_server(
            handler, host, port, limits=HttpLimits(max_body_bytes=MAX_BODY_BYTES)
        )
        bound = server.sockets[0].getsockname()[1]
        _logger.info("Webhook receiver on http://%s:%d/webhook (health: GET /health)", host, bound)
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
):
    """A plain ASGI application (no framework) for users who mount the receiver elsewhere.

    ``POST`` (any path) is a delivery, ``GET`` is health. The reconcile loop starts with the
    ASGI lifespan (or at the first request on servers without lifespan) and stops with it.
    """
    service = AutomationService(config, secret, interval=interval, client=client, workers=workers)

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    service.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await asyncio.to_thread(service.stop)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        service.start()
        body, too_large = bytearray(), False
        while True:
            message = await receive()
            body += message.get("body", b"")
            too_large = too_large or len(body) > MAX_BODY_BYTES
            if too_large:
                body.clear()
            if not message.get("more_body"):
                break
        if too_large:
            status, payload = 413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"}
        else:
            headers: dict[str, str] = {}
            for raw_name, raw_value in scope.get("headers", []):
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            status, payload = service.receiver.handle(scope["method"], headers, bytes(body))
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else data}
        )

    app.service = service  # for tests and health checks from the hosting app
    return app


def __getattr__(name: str):
    """``mlflow_deploy_plugins.registry.webhooks:app``: the ASGI app configured from
    ``MLFLOW_DEPLOY_WEBHOOK_SECRET`` and ``MLFLOW_DEPLOY_AUTOMATION_CONFIG`` (e.g. for uvicorn)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = make_asgi_app(load_config(os.environ.get(CONFIG_ENV)), os.environ.get(SECRET_ENV, ""))
    globals()["app"] = app
    return app


# --------------------------------------------------------------------------- registration
def register_webhook(
    url: str,
    secret: str,
    *,
    events: Iterable[str] = DEFAULT_EVENTS,
    name: str = DEFAULT_WEBHOOK_NAME,
    client: MlflowClient | None = None,
):
    """Create (or update, when one named ``name`` exists) the MLflow webhook to ``url``.

    Returns:
        The ``mlflow.entities.webhook.Webhook``. A new webhook reaches the server's delivery
        cache within ``MLFLOW_WEBHOOK_CACHE_TTL`` seconds (60 by default).
    """
    from mlflow.entities.webhook import WebhookEvent
    from mlflow.exceptions import MlflowException

    if not secret:
        raise InvalidInputError(f"A webhook secret is required (--secret or {SECRET_ENV})")
    events = list(events)
    for event in events:
        try:
            WebhookEvent.from_str(event)
        except (MlflowException, ValueError) as e:
            raise InvalidInputError(f"--events: {event!r} is not an MLflow webhook event") from e
    client = client or MlflowClient()
    existing = next((w for w in _all_webhooks(client) if w.name == name), None)
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


def _all_webhooks(client: MlflowClient) -> list:
    out, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
