"""A webhook delivery in, a status and a JSON body out: signature, replay window, de-duplication,
payload -> :class:`~mlflow_deploy_plugins.registry.triggers.Trigger` for the pipeline."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from mlflow.protos.databricks_pb2 import UNAUTHENTICATED

from mlflow_deploy_plugins.errors import DeployPluginError, InvalidInputError
from mlflow_deploy_plugins.registry.decision import Slot
from mlflow_deploy_plugins.registry.defaults import SECRET_ENV
from mlflow_deploy_plugins.registry.triggers import Trigger
from mlflow_deploy_plugins.registry.webhooks.deliveries import (
    REPLAY_WINDOW_S,
    DeliveryLog,
    RejectionLog,
)
from mlflow_deploy_plugins.serving.errors import (
    BadRequest,
    MethodNotAllowed,
    ServingError,
    Unauthorized,
)

if TYPE_CHECKING:  # the pipeline pulls in the conversion stack; the receiver only calls it
    from mlflow_deploy_plugins.registry.pipeline import Pipeline

_logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_ID_HEADER = "x-mlflow-delivery-id"
#: The counters' route: answered to loopback clients (no proxy in between) or with the secret as
#: a bearer token; every other GET is liveness only ({"status": "ok"}).
STATS_PATH = "/stats"
#: Headers a reverse proxy adds: a request carrying one is not a local client's.
_FORWARDED_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
#: Registry events that are not promotions: acknowledged, logged at debug level.
_NOT_PROMOTIONS = {
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
}
_PROMOTIONS = ("model_version_alias.created", "model_version_alias.deleted")


class WebhookSignatureError(DeployPluginError):
    """A delivery without a valid, fresh signature (answered 401)."""

    error_code = UNAUTHENTICATED


class Reply(NamedTuple):
    """What the transports send back: an HTTP status and a JSON body."""

    status: int
    body: bytes


def sign(secret: str, delivery_id: str, timestamp: str | int, body: bytes) -> str:
    """MLflow's signature header value: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class SignatureVerifier:
    """Checks the three ``X-MLflow-*`` headers against the raw body, in constant time.

    Args:
        secret: the secret shared with the MLflow webhook.
        window_s: deliveries signed further away from now than this are refused (replays).
        clock: returns the current Unix time (tests freeze it).
    """

    def __init__(
        self, secret: str, window_s: float = REPLAY_WINDOW_S, clock: Callable[[], float] = time.time
    ):
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
        if age > self.window_s:
            raise WebhookSignatureError(
                f"stale delivery: signed {age:.0f} s ago (accepted within {self.window_s:.0f} s)"
            )
        if -age > self.window_s:  # a clock ahead of ours, or a forged timestamp
            raise WebhookSignatureError(
                f"delivery signed {-age:.0f} s in the future (accepted within "
                f"{self.window_s:.0f} s); check the clocks of MLflow's server and this one"
            )
        expected = sign(self._secret, delivery_id, timestamp, body).encode()
        # MLflow sends one signature; several (space-separated) would come from a secret rotation.
        valid = False
        for candidate in signatures.split():
            valid |= hmac.compare_digest(candidate.encode(), expected)
        if not valid:
            raise WebhookSignatureError("signature does not match")
        return delivery_id


class WebhookReceiver:
    """Maps one HTTP request to a :class:`Reply`; the work goes to ``pipeline``.

    Errors are the serving runtime's (``{"error": message}`` with their status); successes are
    ``{"status": "accepted" | "duplicate" | "ignored", ...}``.

    Args:
        pipeline: where accepted triggers go (its ``config`` says which models are watched).
        secret: the secret shared with the MLflow webhook.
        window_s: the replay window.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        secret: str,
        window_s: float = REPLAY_WINDOW_S,
        delivery_log: str | os.PathLike | None = None,
    ):
        self.pipeline = pipeline
        self.verifier = SignatureVerifier(secret, window_s)
        self.deliveries = DeliveryLog(2 * window_s, path=delivery_log)
        self.rejections = RejectionLog()
        self.counts: Counter[str] = Counter()
        self.last_reconcile: float | None = None
        self._token = f"Bearer {secret}".encode()

    def handle(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        path: str = "/",
        client: str | None = None,
    ) -> Reply:
        """``POST``: a delivery; ``GET``/``HEAD``: liveness, or the counters on ``/stats``.

        Args:
            method, headers, body: the request (header names lower-cased).
            path: the request path (only ``/stats`` differs).
            client: the client's IP address (None: unknown, not local).
        """
        try:
            status, payload = self._handle(method, headers, body, path, client)
        except ServingError as e:
            # status and body only: the transports answer every delivery with JSON, no challenge
            return Reply(e.status, e.to_body())
        return Reply(status, json.dumps(payload).encode())

    def health(self) -> dict[str, object]:
        """Queue length, delivery and result counters, time of the last reconcile pass."""
        return {
            "status": "ok",
            "pending": self.pipeline.pending(),
            "deliveries": dict(self.counts),
            "results": dict(self.pipeline.counts),
            "last_reconcile": self.last_reconcile,
        }

    def _handle(
        self, method: str, headers: Mapping[str, str], body: bytes, path: str, client: str | None
    ) -> tuple[int, dict[str, object]]:
        if method in ("GET", "HEAD"):
            if path.rstrip("/") != STATS_PATH:
                return 200, {"status": "ok"}
            if not self._may_read_stats(headers, client):
                raise Unauthorized(
                    f"{STATS_PATH} answers local clients, or send 'Authorization: Bearer "
                    "<webhook secret>'"
                )
            return 200, self.health()
        if method != "POST":
            raise MethodNotAllowed(f"POST deliveries here; GET for liveness, {STATS_PATH}")
        try:
            delivery_id = self.verifier.verify(headers, body)
        except WebhookSignatureError as e:
            self.counts["rejected"] += 1
            self.rejections.rejected(e.message)
            raise Unauthorized(e.message) from e
        if not self.deliveries.first_time(delivery_id):
            self.counts["duplicate"] += 1
            _logger.info("Ignoring replayed delivery %s", delivery_id)
            return 200, {"status": "duplicate"}
        event, data = self._parse(body)
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

    def _may_read_stats(self, headers: Mapping[str, str], client: str | None) -> bool:
        token = headers.get("authorization", "").encode()
        if token and hmac.compare_digest(token, self._token):
            return True
        return is_loopback(client) and not any(h in headers for h in _FORWARDED_HEADERS)

    def _parse(self, body: bytes) -> tuple[str, Mapping]:
        """``(entity.action, data)`` of an MLflow webhook payload."""
        try:
            payload = json.loads(body)
            event = f"{payload['entity']}.{payload['action']}"
            data = payload.get("data") or {}
            if not isinstance(data, dict):
                raise TypeError("data is not an object")
        except (ValueError, KeyError, TypeError) as e:
            self.counts["malformed"] += 1
            raise BadRequest("body is not an MLflow webhook payload {entity, action, data}") from e
        return event, data

    def _trigger(self, event: str, data: Mapping, delivery_id: str) -> tuple[Trigger | None, str]:
        """The trigger a delivery stands for, or None and the reason it is ignored."""
        if event not in _PROMOTIONS:
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


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (``address`` without its port)."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False
