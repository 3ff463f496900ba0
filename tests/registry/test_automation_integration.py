"""End to end, as a user runs it: a real ``mlflow server`` (SQLite, webhooks enabled), the
receiver started with ``webhooks serve``, the webhook created with ``webhooks register``; then
only registry calls: setting, moving and deleting the alias must be followed by themselves.

The server runs with ``MLFLOW_WEBHOOK_CACHE_TTL=1`` (default 60 s: a webhook created after the
server cached an event's empty webhook list is only used once that entry expires; measured 59.8 s
with the default). The receiver reconciles only at start here (``--interval 3600``), so what
follows an alias move below is the webhook delivery itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import requests
from click.testing import CliRunner
from conftest_automation import (
    RECEIVER_CMD,
    alias_payload,
    alias_version,
    audit_runs,
    free_port,
    process_log,
    signed_delivery,
    start_process,
    stop_process,
    wait_for,
    wait_http,
)
from helpers import (
    ClipTransformer,
    fresh_store_uri,
    log_sklearn,
    numeric_pipeline,
    plant_pickle_payload,
    register_sklearn,
)
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline as sklearn_pipeline

from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.registry.cli import webhooks_group

pytestmark = pytest.mark.slow

SECRET = f"whsec-{uuid.uuid4().hex}"
RUN = uuid.uuid4().hex[:6]
DOCKER_MODEL = "it-docker"
DOCKER_DEPLOYMENT = f"it-docker-{RUN}"
DOCKER_REPOSITORY = f"mlflow-deploy-test/automation-{RUN}"
BASE_IMAGE = os.environ.get("MLFLOW_DEPLOY_TEST_BASE_IMAGE", "local/debian-python:bookworm-slim")
#: Bounded waits: a conversion through the server takes a few seconds.
PROMOTION_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from cryptography.fernet import Fernet

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        fresh_store_uri(root),  # a pre-migrated SQLite store: no migrations at start
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = start_process(args, env, root / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, 120)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", url)
            mp.chdir(root)
            mlflow.set_tracking_uri(url)
            mlflow.set_registry_uri(url)
            # artifacts through the server (mlflow-artifacts:/); an env var, unlike
            # mlflow.set_experiment, does not outlive this module
            experiment_id = MlflowClient().create_experiment("automation-integration")
            mp.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
            yield url
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
            os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves it
    finally:
        stop_process(proc, timeout=3)  # nothing to keep: do not wait out its graceful shutdown


@pytest.fixture(scope="module")
def docker_port():
    return free_port()


@pytest.fixture(scope="module")
def receiver(mlflow_server, tmp_path_factory, docker_port):
    root = tmp_path_factory.mktemp("receiver")
    # rules are tried in order: the Docker model's own rule before the pattern
    (root / "automation.yaml").write_text(
        f"""
aliases: [champion]
models:
  - name: {DOCKER_MODEL}
    deploy:
      target: onnx-docker
      name: {DOCKER_DEPLOYMENT}
      config:
        port: {docker_port}
        base_image: {BASE_IMAGE}
        image_repository: {DOCKER_REPOSITORY}
        ready_timeout: 120
  - "it-*"
"""
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_DEPLOY_WEBHOOK_SECRET": SECRET,
        # the test models' custom classes (tests/helpers.py) load there as in the user's own env
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    args = ["serve", "--port", str(port), "--config", str(root / "automation.yaml")]
    args += ["--delivery-log", str(root / "deliveries.txt")]
    proc = start_process([*RECEIVER_CMD, *args, "--interval", "3600"], env, root / "receiver.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, 60)
        result = CliRunner().invoke(
            webhooks_group,
            ["register", "--url", f"{url}/webhook", "--test"],
            env={"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DEPLOY_WEBHOOK_SECRET": SECRET},
        )
        assert result.exit_code == 0, result.output
        assert "Test delivery answered 200." in result.output
        proc.url = url
        yield proc
    finally:
        code = stop_process(proc)
        print(process_log(proc)[-6000:])
    assert code == 0


def health(receiver) -> dict:
    """The receiver's counters (``/stats``: this host is a local client)."""
    return requests.get(f"{receiver.url}/stats", timeout=5).json()


def register(name: str, numeric_xy, broken: bool = False) -> str:
    x, _, y = numeric_xy
    estimator = LogisticRegression(max_iter=200)
    model = (
        sklearn_pipeline(ClipTransformer(), estimator) if broken else numeric_pipeline(estimator)
    )
    return register_sklearn(model.fit(x, y), name, x.head(20))


def finished_audit_runs(name: str, count: int) -> list:
    """The audit runs of source model ``name`` once ``count`` of them are finished (bounded)."""

    def finished():
        runs = [r for r in audit_runs() if r.data.tags.get(tag_keys.SOURCE_MODEL) == name]
        done = len(runs) >= count and all(r.info.status != "RUNNING" for r in runs)
        return runs if done else None

    return wait_for(finished, 30, what=f"{count} audit run(s) of {name}")


def follow(name: str, twin_version: str | None, what: str) -> float:
    """Seconds until ``<name>-onnx@champion`` is ``twin_version`` (bounded)."""
    started = time.monotonic()
    wait_for(
        lambda: alias_version(f"{name}-onnx", "champion") == twin_version,
        PROMOTION_TIMEOUT_S,
        what=what,
    )
    return time.monotonic() - started


def test_setting_moving_and_deleting_the_alias_is_followed_through_webhooks(receiver, numeric_xy):
    name = "it-churn"
    client = MlflowClient()
    register(name, numeric_xy)
    register(name, numeric_xy)

    client.set_registered_model_alias(name, "champion", "1")
    first = follow(name, "1", "the first promotion")
    client.set_registered_model_alias(name, "champion", "2")
    follow(name, "2", "the second promotion")
    client.set_registered_model_alias(name, "champion", "1")
    back = follow(name, "1", "the move back")
    client.delete_registered_model_alias(name, "champion")
    follow(name, None, "the alias removal")

    runs = finished_audit_runs(name, 4)
    timings = {k: round(v, 2) for k, v in runs[0].data.metrics.items() if k.startswith("timing")}
    print(f"alias -> ONNX alias: first {first:.1f} s {timings}, move back {back:.1f} s")
    assert [r.data.tags[tag_keys.AUDIT_RESULT] for r in runs] == [
        "converted",
        "converted",
        "reused",
        "removed",
    ]
    events = [r.data.tags[tag_keys.AUDIT_EVENT] for r in runs]
    assert events == ["model_version_alias.created"] * 3 + ["model_version_alias.deleted"]
    assert all(r.data.tags[tag_keys.AUDIT_DELIVERY_IDS] for r in runs)
    source = client.get_model_version(name, "2").tags
    assert (
        source[tag_keys.STATUS] == tag_keys.STATUS_CONVERTED
        and source[tag_keys.ONNX_VERSION] == "2"
    )
    assert health(receiver)["status"] == "ok"
    # the server also sent the twin's own alias events: acknowledged, never converted
    log = process_log(receiver)
    assert f"Accepted model_version_alias.created for {name}-onnx" not in log
    assert f"Ignoring model_version_alias.created for {name}-onnx" in log
    assert "an ONNX twin (ours)" in log


def test_bad_deliveries_are_refused_and_change_nothing(receiver):
    url = f"{receiver.url}/webhook"
    before_runs, before = len(audit_runs()), health(receiver)["deliveries"]
    headers, body = signed_delivery(SECRET, alias_payload("it-churn", "champion", 1))

    unsigned = requests.post(
        url, data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    forged = requests.post(url, data=body, headers=signed_delivery("wrong", {})[0], timeout=5)
    stale_headers, stale_body = signed_delivery(
        SECRET, alias_payload("it-churn", "champion", 1), timestamp=int(time.time()) - 600
    )
    stale = requests.post(url, data=stale_body, headers=stale_headers, timeout=5)
    assert [r.status_code for r in (unsigned, forged, stale)] == [401, 401, 401]

    other = signed_delivery(SECRET, alias_payload("not-configured", "champion", 1))
    assert requests.post(url, data=other[1], headers=other[0], timeout=5).json() == {
        "status": "ignored",
        "reason": "model not in the config",
    }
    replay = requests.post(url, data=other[1], headers=other[0], timeout=5)
    assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
    unknown = signed_delivery(SECRET, {"entity": "budget_policy", "action": "exceeded", "data": {}})
    assert requests.post(url, data=unknown[1], headers=unknown[0], timeout=5).json()["reason"] == (
        "unknown event"
    )

    after = health(receiver)["deliveries"]
    assert after["rejected"] - before.get("rejected", 0) == 3
    assert after["duplicate"] - before.get("duplicate", 0) == 1
    assert len(audit_runs()) == before_runs
    log = process_log(receiver)
    assert "Rejected 1 webhook delivery since the last report" in log and "unsigned" in log
    assert "Ignoring budget_policy.exceeded" in log and "unknown event" in log


def test_a_failing_conversion_tags_the_source_and_the_receiver_stays_healthy(receiver, numeric_xy):
    name = "it-broken"
    client = MlflowClient()
    register(name, numeric_xy, broken=True)

    client.set_registered_model_alias(name, "champion", "1")

    tags = wait_for(
        lambda: (t := client.get_model_version(name, "1").tags).get(tag_keys.ERROR) and t,
        PROMOTION_TIMEOUT_S,
        what="the failure tag",
    )
    assert (
        tags[tag_keys.STATUS] == tag_keys.STATUS_FAILED
        and "ClipTransformer" in tags[tag_keys.ERROR]
    )
    assert alias_version(f"{name}-onnx", "champion") is None
    assert receiver.poll() is None and health(receiver)["status"] == "ok"

    failed = finished_audit_runs(name, 1)
    assert [(r.info.status, r.data.tags[tag_keys.AUDIT_RESULT]) for r in failed] == [
        ("FAILED", "failed")
    ]
    # still serving: the next promotion of another model goes through
    register("it-after", numeric_xy)
    client.set_registered_model_alias("it-after", "champion", "1")
    follow("it-after", "1", "a promotion after the failure")


class RestartableReceiver:
    """``webhooks serve`` on a fixed port (so the MLflow webhook keeps pointing at it), started
    and stopped as an operator restarts it; each run has its own log."""

    def __init__(self, root: Path, server: str, config: str):
        self.root, self.port, self.runs = root, free_port(), 0
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "automation.yaml"
        self.config.write_text(config)
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": server}
        self.env["MLFLOW_DEPLOY_WEBHOOK_SECRET"] = SECRET
        self.proc = None

    def start(self) -> None:
        self.runs += 1
        args = ["serve", "--port", str(self.port), "--config", str(self.config)]
        args += ["--interval", "3600", "--delivery-log", str(self.root / "deliveries.txt")]
        self.proc = start_process(
            [*RECEIVER_CMD, *args], self.env, self.root / f"receiver-{self.runs}.log"
        )
        wait_http(f"{self.url}/health", self.proc, 60)

    def stop(self) -> None:
        if self.proc is not None:
            assert stop_process(self.proc) == 0, process_log(self.proc)[-4000:]
            self.proc = None

    def log(self) -> str:
        return process_log(self.proc)

    def wait_logged(self, text: str) -> None:
        wait_for(lambda: text in self.log(), PROMOTION_TIMEOUT_S, what=repr(text))


@pytest.fixture
def restartable(mlflow_server, tmp_path):
    """A second receiver for models ``rs-*`` (the module's receiver ignores them)."""
    receiver = RestartableReceiver(tmp_path, mlflow_server, "models: ['rs-*']\n")
    receiver.start()
    name = f"mlflow-deploy-restart-{RUN}"
    result = CliRunner().invoke(
        webhooks_group,
        ["register", "--url", f"{receiver.url}/webhook", "--name", name],
        env={"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DEPLOY_WEBHOOK_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.output
    try:
        yield receiver
    finally:
        receiver.stop()
        client = MlflowClient()
        for webhook in client.list_webhooks():
            if webhook.name == name:
                client.delete_webhook(webhook.webhook_id)


def test_manual_promote_survives_receiver_restarts_and_pickle_needs_trust(
    restartable, numeric_xy, tmp_path_factory
):
    from mlflow_deploy_plugins import promote

    client = MlflowClient()
    x, _, y = numeric_xy
    model = numeric_pipeline(LogisticRegression(max_iter=200)).fit(x, y)

    # 1. a person promotes by hand, on the twin only; the receiver restarts: the alias stays
    register_sklearn(model, "rs-manual", x.head(20))
    promote("rs-manual", 1, "champion", sample=x, alias_source=False)
    assert alias_version("rs-manual-onnx", "champion") == "1"
    replayed = signed_delivery(
        SECRET, {"entity": "budget_policy", "action": "exceeded", "data": {}}
    )
    first = requests.post(f"{restartable.url}/webhook", data=replayed[1], headers=replayed[0])
    assert first.status_code == 200 and first.json()["status"] == "ignored"
    restartable.stop()
    restartable.start()
    restartable.wait_logged("rs-manual@champion (reconcile pass): keep because")
    assert "was set by promote()" in restartable.log()
    assert alias_version("rs-manual-onnx", "champion") == "1"
    # the delivery id outlived the restart: a replay inside the window is refused
    again = requests.post(f"{restartable.url}/webhook", data=replayed[1], headers=replayed[0])
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")

    # 2. a pickle model with a payload: refused through the webhook by default...
    marker = tmp_path_factory.mktemp("payload") / "ran"
    info = log_sklearn(
        model, x.head(20), serialization_format="pickle", registered_model_name="rs-pickle"
    )
    plant_pickle_payload(tmp_path_factory.getbasetemp(), info.model_id, model, marker)
    client.set_registered_model_alias("rs-pickle", "champion", "1")
    tags = wait_for(
        lambda: (t := client.get_model_version("rs-pickle", "1").tags).get(tag_keys.ERROR) and t,
        PROMOTION_TIMEOUT_S,
        what="the refusal tag",
    )
    assert (
        tags[tag_keys.STATUS] == tag_keys.STATUS_REFUSED and "trust_pickle" in tags[tag_keys.ERROR]
    )
    refused = finished_audit_runs("rs-pickle", 1)
    assert [r.data.tags[tag_keys.AUDIT_RESULT] for r in refused] == ["refused"]
    assert "pickle serialisation" in restartable.log()
    assert not marker.exists() and alias_version("rs-pickle-onnx", "champion") is None

    # ... and converted once the config trusts it (the restart's reconcile pass picks it up)
    restartable.stop()
    restartable.config.write_text(
        "models:\n  - name: rs-pickle\n    trust_pickle: true\n  - 'rs-*'\n"
    )
    restartable.start()
    follow("rs-pickle", "1", "the trusted pickle model")
    assert marker.exists(), "trust_pickle: the automation loaded the model"
    assert alias_version("rs-manual-onnx", "champion") == "1"  # still the person's


def _docker_or_skip():
    reason = None
    try:
        import docker

        engine = docker.from_env()
        engine.ping()
        engine.images.get(BASE_IMAGE)
    except ImportError:
        reason = "the docker SDK is not installed (pip install '.[docker]')"
    except Exception as e:  # no engine, or no base image
        reason = f"no Docker engine with {BASE_IMAGE} ({type(e).__name__}: {e})"
    if reason is None:
        return engine
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the Docker test must run (tests/infra/docker.sh)")
    pytest.skip(f"{reason}: start one with `bash tests/infra/docker.sh`")


@pytest.mark.docker
def test_promotion_deploys_the_onnx_version_with_the_docker_target(
    receiver, numeric_xy, docker_port
):
    pytest.importorskip("mlflow_deploy_plugins.targets.onnx_docker")
    engine = _docker_or_skip()
    from mlflow.deployments import get_deploy_client

    client, twin = MlflowClient(), f"{DOCKER_MODEL}-onnx"
    register(DOCKER_MODEL, numeric_xy)
    try:
        client.set_registered_model_alias(DOCKER_MODEL, "champion", "1")

        tag = tag_keys.deployment_tag("onnx-docker", DOCKER_DEPLOYMENT)

        def deployed() -> bool:
            if alias_version(twin, "champion") is None:
                return False
            return client.get_registered_model(twin).tags.get(tag) == "1"

        wait_for(deployed, 300, interval=1, what="the deployment")
        assert alias_version(twin, "champion") == "1"
        deployment = get_deploy_client("onnx-docker").get_deployment(DOCKER_DEPLOYMENT)
        assert deployment["model_uri"] == f"models:/{twin}/1"
        ready = requests.get(f"http://127.0.0.1:{docker_port}/v2/health/ready", timeout=5)
        assert ready.status_code == 200
        (run,) = finished_audit_runs(DOCKER_MODEL, 1)
        assert run.data.tags[tag_keys.AUDIT_TARGET] == "onnx-docker"
        assert run.data.tags[tag_keys.AUDIT_DEPLOYMENT] == DOCKER_DEPLOYMENT
        assert run.data.metrics["timing.deploy_s"] > 0
    finally:
        with contextlib.suppress(Exception):
            get_deploy_client("onnx-docker").delete_deployment(
                DOCKER_DEPLOYMENT, config={"remove_image": "true"}
            )
        for image in engine.images.list(name=DOCKER_REPOSITORY):
            with contextlib.suppress(Exception):
                engine.images.remove(image.id, force=True)
