"""The webhook receiver: signatures exactly as MLflow signs, replays, bad input, the ASGI app,
the standalone server (``webhooks serve``) and ``register_webhook`` on a real local registry."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter

import pytest
import requests
from conftest_automation import (
    RECEIVER_CMD,
    FakePromote,
    alias_payload,
    alias_version,
    audit_runs,
    fake_source_versions,
    free_port,
    process_log,
    signed_delivery,
    start_process,
    stop_process,
    wait_for,
    wait_http,
)
from helpers import numeric_pipeline, register_sklearn
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import InvalidInputError
from mlflow_deploy_plugins.registry import promote as promote_module
from mlflow_deploy_plugins.registry.automation_config import parse_config
from mlflow_deploy_plugins.registry.webhooks.receiver import (
    DeliveryLog,
    SignatureVerifier,
    WebhookReceiver,
    sign,
)
from mlflow_deploy_plugins.registry.webhooks.registration import register_webhook
from mlflow_deploy_plugins.registry.webhooks.transports import make_asgi_app

SECRET = "whsec-test-0123456789"
NAME, TWIN = "churn", "churn-onnx"


class RecordingPipeline:
    """What the receiver needs from a pipeline; records the triggers instead of running them."""

    def __init__(self, config=None):
        self.config = parse_config(config or {"models": ["churn*"]})
        self.triggers = []
        self.counts = Counter()

    def submit(self, trigger):
        self.triggers.append(trigger)

    def pending(self) -> int:
        return len(self.triggers)


@pytest.fixture
def receiver():
    return WebhookReceiver(RecordingPipeline(), SECRET)


def deliver(receiver, headers, body, method="POST", **where):
    """(status, decoded JSON body) of one request (``where``: ``path=``, ``client=``)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    status, reply = receiver.handle(method, lowered, body, **where)
    return status, json.loads(reply)


# --------------------------------------------------------------------------- signatures
def test_signature_is_byte_for_byte_mlflows():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps(alias_payload(NAME, "champion", 3))
    ours = sign(SECRET, "d-1", "1795802401", body.encode())
    assert ours == _generate_hmac_signature(SECRET, "d-1", "1795802401", body)


def test_a_signed_promotion_is_accepted_and_queued(receiver):
    headers, body = signed_delivery(SECRET, alias_payload(NAME, "champion", 3), delivery_id="d-1")

    status, reply = deliver(receiver, headers, body)

    assert (status, reply["status"]) == (202, "accepted")
    (trigger,) = receiver.pipeline.triggers
    assert (trigger.slot.model, trigger.slot.kind, trigger.slot.label) == (
        NAME,
        "alias",
        "champion",
    )
    assert (trigger.version, trigger.explicit, trigger.delivery_ids) == ("3", True, ("d-1",))
    assert trigger.event == "model_version_alias.created"


def tamper(headers, body):
    return headers, body.replace(b'"3"', b'"4"')


def wrong_secret(headers, body):
    return signed_delivery("another-secret", json.loads(body))


def drop(header):
    return lambda headers, body: ({k: v for k, v in headers.items() if k != header}, body)


def timestamp_shift(seconds):
    def shift(headers, body):
        ts = int(time.time()) + seconds
        return signed_delivery(SECRET, json.loads(body), timestamp=ts)

    return shift


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (drop("X-MLflow-Signature"), "unsigned"),
        (drop("X-MLflow-Delivery-Id"), "unsigned"),
        (drop("X-MLflow-Timestamp"), "unsigned"),
        (wrong_secret, "signature does not match"),
        (tamper, "signature does not match"),
        (timestamp_shift(-301), "stale delivery: signed"),
        (timestamp_shift(+301), "s in the future"),
        (lambda h, b: ({**h, "X-MLflow-Timestamp": "yesterday"}, b), "not a Unix time"),
        (lambda h, b: ({**h, "X-MLflow-Signature": "v1,AAAA"}, b), "signature does not match"),
    ],
)
def test_unsigned_wrongly_signed_or_stale_deliveries_get_401(receiver, mutate, message):
    headers, body = mutate(*signed_delivery(SECRET, alias_payload(NAME, "champion", 3)))

    status, reply = deliver(receiver, headers, body)

    assert status == 401 and message in reply["error"]
    assert receiver.pipeline.triggers == []


def test_a_signature_list_from_a_rotation_is_accepted(receiver):
    headers, body = signed_delivery(SECRET, alias_payload(NAME, "champion", 3))
    headers["X-MLflow-Signature"] = "v1,b2xkc2lnbmF0dXJl " + headers["X-MLflow-Signature"]
    assert deliver(receiver, headers, body)[0] == 202


def test_a_replayed_delivery_is_ignored(receiver, caplog):
    headers, body = signed_delivery(SECRET, alias_payload(NAME, "champion", 3))
    assert deliver(receiver, headers, body)[0] == 202
    with caplog.at_level(logging.INFO):
        status, reply = deliver(receiver, headers, body)
    assert (status, reply["status"]) == (200, "duplicate")
    assert len(receiver.pipeline.triggers) == 1
    assert "replayed delivery" in caplog.text


def test_delivery_ids_are_forgotten_after_their_window():
    log = DeliveryLog(ttl_s=0.05)
    assert log.first_time("a") and not log.first_time("a")
    time.sleep(0.1)
    assert log.first_time("a")


def test_a_secret_is_required():
    with pytest.raises(InvalidInputError, match="MLFLOW_DEPLOY_WEBHOOK_SECRET"):
        SignatureVerifier("")


# --------------------------------------------------------------------------- what is ignored
@pytest.mark.parametrize(
    ("payload", "reason", "logged"),
    [
        ({"entity": "gizmo", "action": "exploded", "data": {}}, "unknown event", True),
        (
            {"entity": "prompt_alias", "action": "created", "data": {"name": "p", "alias": "a"}},
            "unknown event",
            True,
        ),
        (
            {"entity": "model_version", "action": "created", "data": {"name": NAME}},
            "not a promotion",
            False,
        ),
        (alias_payload("other", "champion", 1), "model not in the config", True),
        (alias_payload(TWIN, "champion", 1), "an ONNX twin (ours)", True),
        (alias_payload(NAME, "staging", 1), "alias 'staging' is not watched", True),
    ],
)
def test_events_that_are_not_our_promotions_are_ignored_with_a_log_line(
    receiver, caplog, payload, reason, logged
):
    headers, body = signed_delivery(SECRET, payload)
    with caplog.at_level(logging.INFO, logger="mlflow_deploy_plugins.registry.webhooks"):
        status, reply = deliver(receiver, headers, body)
    assert (status, reply) == (200, {"status": "ignored", "reason": reason})
    assert receiver.pipeline.triggers == []
    assert (reason in caplog.text) is logged


def test_alias_deleted_is_queued_without_a_version(receiver):
    payload = alias_payload(NAME, "champion", None, action="deleted")
    assert deliver(receiver, *signed_delivery(SECRET, payload))[0] == 202
    (trigger,) = receiver.pipeline.triggers
    assert (trigger.version, trigger.explicit) == (None, False)


def test_malformed_bodies_and_methods(receiver):
    headers, body = signed_delivery(SECRET, {"no": "entity"})
    assert deliver(receiver, headers, body)[0] == 400
    headers, body = signed_delivery(SECRET, {"entity": "x", "action": "y", "data": [1]})
    assert deliver(receiver, headers, body)[0] == 400
    headers = {k: v for k, v in signed_delivery(SECRET, {})[0].items()}
    body = b"not json"
    headers["X-MLflow-Signature"] = sign(
        SECRET, headers["X-MLflow-Delivery-Id"], headers["X-MLflow-Timestamp"], body
    )
    assert deliver(receiver, headers, body)[0] == 400
    assert deliver(receiver, {}, b"", method="PUT")[0] == 405
    status, health = deliver(receiver, {}, b"", method="GET", path="/stats", client="127.0.0.1")
    assert status == 200 and health["status"] == "ok"
    assert health["deliveries"] == {"malformed": 3}


def test_error_replies_are_the_serving_runtimes_error_body(receiver):
    """Errors come from serving/errors.py: ``{"error": message}``, nothing else; successes keep
    their ``status`` bodies."""
    unsigned = receiver.handle("POST", {}, b"{}")
    assert unsigned.status == 401
    assert json.loads(unsigned.body) == {"error": "unsigned delivery (X-MLflow-* headers missing)"}
    put = receiver.handle("PUT", {}, b"")
    assert (put.status, json.loads(put.body)) == (
        405,
        {"error": "POST deliveries here; GET for liveness, /stats"},
    )
    headers, body = signed_delivery(SECRET, {"no": "entity"})
    malformed = deliver(receiver, headers, body)
    assert malformed == (
        400,
        {"error": "body is not an MLflow webhook payload {entity, action, data}"},
    )


# --------------------------------------------------------------------------- ASGI app
class AsgiClient:
    """Drives a plain ASGI app the way an ASGI server would (lifespan + http)."""

    def __init__(self, app):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._lifespan_in: asyncio.Queue = asyncio.Queue()
        self._lifespan_out: asyncio.Queue = asyncio.Queue()
        self._lifespan = None

    def lifespan(self, event: str) -> str:
        async def go():
            if self._lifespan is None:
                scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
                self._lifespan = asyncio.ensure_future(
                    self.app(scope, self._lifespan_in.get, self._lifespan_out.put)
                )
            await self._lifespan_in.put({"type": f"lifespan.{event}"})
            return (await asyncio.wait_for(self._lifespan_out.get(), 60))["type"]

        return self.loop.run_until_complete(go())

    def request(
        self, method: str, headers: dict, body: bytes = b"", path: str = "/hooks/mlflow"
    ) -> tuple[int, dict]:
        chunks = [body[:10], body[10:]]  # a body in two messages, as servers may deliver it
        sent = []

        async def receive():
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "client": ("127.0.0.1", 50123),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
        self.loop.run_until_complete(self.app(scope, receive, send))
        return sent[0]["status"], json.loads(sent[1]["body"])


def test_asgi_app_receives_promotes_and_stops(tracking_uri, monkeypatch, tmp_path):
    fake = FakePromote()
    monkeypatch.setattr(promote_module, "promote", fake)
    fake_source_versions(NAME, 1)
    app = make_asgi_app(
        parse_config({"models": [NAME]}),
        SECRET,
        interval=3600,
        delivery_log=str(tmp_path / "deliveries.txt"),
    )
    client = AsgiClient(app)
    try:
        assert client.lifespan("startup") == "lifespan.startup.complete"
        MlflowClient().set_registered_model_alias(NAME, "champion", "1")
        headers, body = signed_delivery(SECRET, alias_payload(NAME, "champion", 1))

        assert client.request("POST", headers, body)[0] == 202
        assert client.request("POST", headers, body)[1]["status"] == "duplicate"
        assert client.request("POST", {}, body)[0] == 401
        wait_for(lambda: alias_version(TWIN, "champion") == "1", 30, what="the twin alias")
        assert client.request("GET", {}) == (200, {"status": "ok"})  # liveness: no counters
        status, health = client.request("GET", {}, path="/stats")
        assert status == 200 and health["deliveries"] == {
            "accepted": 1,
            "duplicate": 1,
            "rejected": 1,
        }
        assert client.lifespan("shutdown") == "lifespan.shutdown.complete"
    finally:
        app.service.stop(5)
        client.loop.close()
    assert fake.calls == [(NAME, "1")]


# --------------------------------------------------------------------------- standalone server
def test_webhooks_serve_runs_the_receiver_and_reconciles_on_start(
    tracking_uri, tmp_path, numeric_xy
):
    x, _, y = numeric_xy
    model = numeric_pipeline(LogisticRegression(max_iter=200)).fit(x, y)
    register_sklearn(model, NAME, x.head(20))
    register_sklearn(model, NAME, x.head(20))
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", "1")  # while no receiver runs
    (tmp_path / "automation.yaml").write_text("models: [churn]\naliases: [champion]\n")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_DEPLOY_WEBHOOK_SECRET": SECRET,
    }
    args = ["serve", "--port", str(port), "--config", "automation.yaml", "--interval", "3600"]
    args += ["--delivery-log", str(tmp_path / "deliveries.txt")]
    proc = start_process([*RECEIVER_CMD, *args], env, tmp_path / "receiver.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, 60)
        # the pass at start caught the alias set while the receiver was down
        wait_for(lambda: alias_version(TWIN, "champion") == "1", 90, what="reconcile at start")

        client.set_registered_model_alias(NAME, "champion", "2")
        headers, body = signed_delivery(SECRET, alias_payload(NAME, "champion", 2))
        assert requests.post(f"{url}/webhook", data=body, headers={}, timeout=5).status_code == 401
        reply = requests.post(f"{url}/webhook", data=body, headers=headers, timeout=5)
        assert reply.status_code == 202, reply.text
        wait_for(lambda: alias_version(TWIN, "champion") == "2", 90, what="the delivery's work")
        # the twin alias moves before the job ends (audit run, counters): wait for the end
        health = wait_for(
            lambda: (h := requests.get(f"{url}/stats", timeout=5).json())["pending"] == 0 and h,
            30,
            what="an idle receiver",
        )
        assert health["deliveries"] == {"accepted": 1, "rejected": 1}
        assert health["results"] == {"converted": 2} and health["last_reconcile"]
    finally:
        code = stop_process(proc)
    log = process_log(proc)
    assert code == 0, log
    assert "Rejected 1 webhook delivery since the last report" in log and "unsigned" in log
    events = [r.data.tags[tag_keys.AUDIT_EVENT] for r in audit_runs()]
    assert events == ["reconcile", "model_version_alias.created"]


# --------------------------------------------------------------------------- registration
def test_register_webhook_creates_once_then_updates(tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    client = MlflowClient()

    created = register_webhook("http://127.0.0.1:8787/webhook", SECRET)
    updated = register_webhook("http://127.0.0.1:9797/webhook", SECRET)

    assert updated.webhook_id == created.webhook_id
    (webhook,) = client.list_webhooks()
    assert webhook.url == "http://127.0.0.1:9797/webhook"
    assert sorted(str(e) for e in webhook.events) == [
        "model_version_alias.created",
        "model_version_alias.deleted",
    ]
    with pytest.raises(InvalidInputError, match="'model_version.promoted'"):
        register_webhook("http://127.0.0.1:8787/webhook", SECRET, events=["model_version.promoted"])
    with pytest.raises(InvalidInputError, match="secret is required"):
        register_webhook("http://127.0.0.1:8787/webhook", "")


# --------------------------------------------------------------------------- issue 12
def test_counters_only_for_local_or_authenticated_clients(receiver):
    assert deliver(receiver, {}, b"{}")[0] == 401  # counted as rejected
    for path in ("/", "/health", "/webhook", "/anything"):  # liveness everywhere, no counters
        assert deliver(receiver, {}, b"", method="GET", path=path, client="203.0.113.9") == (
            200,
            {"status": "ok"},
        )
    remote = deliver(receiver, {}, b"", method="GET", path="/stats", client="203.0.113.9")
    assert remote[0] == 401 and "deliveries" not in remote[1]
    unknown = deliver(receiver, {}, b"", method="GET", path="/stats")
    assert unknown[0] == 401
    proxied = {"X-Forwarded-For": "203.0.113.9"}  # a local proxy in front of a remote client
    assert (
        deliver(receiver, proxied, b"", method="GET", path="/stats", client="127.0.0.1")[0] == 401
    )
    wrong = {"Authorization": "Bearer not-the-secret"}
    assert (
        deliver(receiver, wrong, b"", method="GET", path="/stats", client="203.0.113.9")[0] == 401
    )

    for headers, client in [
        ({}, "127.0.0.1"),
        ({}, "::1"),
        ({"Authorization": f"Bearer {SECRET}"}, "203.0.113.9"),
    ]:
        status, stats = deliver(receiver, headers, b"", method="GET", path="/stats", client=client)
        assert status == 200 and stats["deliveries"] == {"rejected": 1}, (headers, client)


def test_unsigned_deliveries_are_logged_at_most_once_a_minute_with_the_count(receiver, caplog):
    from mlflow_deploy_plugins.registry.webhooks.deliveries import RejectionLog

    now = [1000.0]
    receiver.rejections = RejectionLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(500):  # a flood
            assert receiver.handle("POST", {}, b"{}").status == 401
        now[0] += 30
        receiver.handle("POST", {}, b"{}")
        now[0] += 31
        receiver.handle("POST", {}, b"{}")
    lines = [r.getMessage() for r in caplog.records if "Rejected" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Rejected 1 webhook delivery ")
    assert lines[1].startswith("Rejected 501 webhook deliveries ")  # 499 + 1 + the last one
    assert "unsigned delivery" in lines[1]
    assert receiver.counts["rejected"] == 502


def test_a_replay_is_refused_after_a_restart(tmp_path):
    log = tmp_path / "state" / "deliveries.txt"
    log.parent.mkdir()
    headers, body = signed_delivery(SECRET, alias_payload(NAME, "champion", 1))
    first = WebhookReceiver(RecordingPipeline(), SECRET, delivery_log=log)
    assert deliver(first, headers, body)[0] == 202

    restarted = WebhookReceiver(RecordingPipeline(), SECRET, delivery_log=log)  # a new process

    assert deliver(restarted, headers, body) == (200, {"status": "duplicate"})
    assert restarted.pipeline.triggers == []
    fresh_headers, fresh_body = signed_delivery(SECRET, alias_payload(NAME, "champion", 2))
    assert deliver(restarted, fresh_headers, fresh_body)[0] == 202


def test_delivery_log_forgets_expired_ids_and_survives_a_torn_line(tmp_path):
    from mlflow_deploy_plugins.registry.webhooks.deliveries import DeliveryLog

    path = tmp_path / "deliveries.txt"
    now = [1_000_000.0]
    log = DeliveryLog(ttl_s=600, path=path, clock=lambda: now[0])
    assert log.first_time("a") and not log.first_time("a")
    with open(path, "a") as f:
        f.write("b 99")  # a crash mid-line: read back as an id that expired long ago
    now[0] += 599
    assert not DeliveryLog(ttl_s=600, path=path, clock=lambda: now[0]).first_time("a")
    now[0] += 2
    assert DeliveryLog(ttl_s=600, path=path, clock=lambda: now[0]).first_time("a")
