"""Helpers for the promotion-automation tests (imported by them, not a pytest conftest).

- ``memory_target``: a real MLflow deployment target plugin (registered in MLflow's plugin store,
  reached through ``get_deploy_client``) that keeps deployments in memory and can be told to fail.
- ``signed_delivery``: a delivery exactly as MLflow's tracking server sends it.
- small waits and registry readers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid

from mlflow.deployments import BaseDeploymentClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from mlflow_deploy_plugins.registry.webhooks.receiver import sign

MEMORY_TARGET = "memory-test-target"


class MemoryTarget:
    """State of the in-memory target: deployments, the calls made, versions that must fail."""

    def __init__(self):
        self.deployments: dict[str, dict] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, name, model_uri)
        self.fail_uris: set[str] = set()
        self.lock = threading.Lock()

    def apply(self, method: str, name: str, model_uri: str, config) -> dict:
        with self.lock:
            self.calls.append((method, name, model_uri))
            if model_uri in self.fail_uris:
                raise MlflowException(f"readiness probe failed for {model_uri}")
            self.deployments[name] = {"name": name, "model_uri": model_uri, "config": config}
            return dict(self.deployments[name])


def _make_plugin_module(state: MemoryTarget) -> types.ModuleType:
    class MemoryDeploymentClient(BaseDeploymentClient):
        def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
            return state.apply("create", name, model_uri, config)

        def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
            return state.apply("update", name, model_uri, config)

        def delete_deployment(self, name, config=None, endpoint=None):
            state.deployments.pop(name, None)

        def list_deployments(self, endpoint=None):
            return list(state.deployments.values())

        def get_deployment(self, name, endpoint=None):
            if name not in state.deployments:
                raise MlflowException(f"no deployment {name}", RESOURCE_DOES_NOT_EXIST)
            return dict(state.deployments[name])

        def predict(self, deployment_name=None, inputs=None, endpoint=None):
            raise NotImplementedError

    module = types.ModuleType("memory_test_target")
    module.MemoryDeploymentClient = MemoryDeploymentClient
    module.run_local = lambda name, model_uri, flavor=None, config=None: None
    module.target_help = lambda: "in-memory test target"
    return module


@contextlib.contextmanager
def installed_memory_target():
    """Register the in-memory target with MLflow's deployment plugin store, then remove it."""
    from mlflow.deployments.interface import plugin_store

    state = MemoryTarget()
    plugin_store.registry[MEMORY_TARGET] = _make_plugin_module(state)
    try:
        yield state
    finally:
        plugin_store.registry.pop(MEMORY_TARGET, None)


def signed_delivery(
    secret: str,
    payload: dict,
    *,
    delivery_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a delivery signed like MLflow's server signs it."""
    body = json.dumps(payload).encode()
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": sign(secret, delivery_id, timestamp, body),
    }
    return headers, body


def alias_payload(name: str, alias: str, version: str | None, action: str = "created") -> dict:
    data = {"name": name, "alias": alias}
    if version is not None:
        data["version"] = str(version)
    return {
        "entity": "model_version_alias",
        "action": action,
        "timestamp": "2026-11-27T18:00:01.635508+00:00",
        "data": data,
    }


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def alias_version(name: str, alias: str, client: MlflowClient | None = None) -> str | None:
    """The version ``name@alias`` points at, None when the model or the alias does not exist."""
    client = client or MlflowClient()
    try:
        version = client.get_registered_model(name).aliases.get(alias)
    except MlflowException:
        return None
    return None if version is None else str(version)


def audit_runs(experiment: str = "mlflow-deploy-automation", client: MlflowClient | None = None):
    """Audit runs, oldest first."""
    client = client or MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


class FakePromote:
    """Stands in for ``promote()`` where the conversion itself is not under test.

    Writes the registry state ``promote()`` writes (a twin model tagged ``kind=onnx``, one version
    per source version tagged with it, the alias/stage last, re-use of an earlier version) without
    converting anything. Records its calls; can be held at a gate, meet a barrier, or fail.
    """

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.started = threading.Event()
        self.gate: threading.Event | None = None
        self.barrier: threading.Barrier | None = None
        self.fail_versions: set[str] = set()
        self.lock = threading.Lock()

    def __call__(
        self, name, version, alias="champion", *, stage=None, onnx_name=None, client=None, **_
    ):
        from mlflow_deploy_plugins.core import tags as tag_keys
        from mlflow_deploy_plugins.errors import ConversionError
        from mlflow_deploy_plugins.registry.promote import PromotionResult

        client = client or MlflowClient()
        version, onnx_name = str(version), onnx_name or f"{name}-onnx"
        with self.lock:
            self.calls.append((name, version))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.barrier is not None:
            self.barrier.wait()
        if version in self.fail_versions:
            client.set_model_version_tag(name, version, tag_keys.STATUS, tag_keys.STATUS_FAILED)
            client.set_model_version_tag(name, version, tag_keys.ERROR, "fake conversion failure")
            raise ConversionError(f"fake conversion failure of {name} v{version}")
        try:
            client.get_registered_model(onnx_name)
        except MlflowException:
            client.create_registered_model(
                onnx_name, tags={tag_keys.KIND: "onnx", tag_keys.SOURCE_MODEL: name}
            )
        existing = [
            mv
            for mv in client.search_model_versions(f"name='{onnx_name}'")
            if mv.tags.get(tag_keys.SOURCE_VERSION) == version
        ]
        if existing:
            twin_version, reused = str(existing[0].version), True
        else:
            mv = client.create_model_version(
                onnx_name,
                source=f"s3://fake-bucket/{name}/{version}",
                tags={
                    tag_keys.KIND: "onnx",
                    tag_keys.SOURCE_VERSION: version,
                    tag_keys.STATUS: tag_keys.STATUS_CONVERTED,
                },
            )
            twin_version, reused = str(mv.version), False
            client.set_model_version_tag(name, version, tag_keys.STATUS, tag_keys.STATUS_CONVERTED)
        if stage is not None:
            client.transition_model_version_stage(onnx_name, twin_version, stage)
        if alias is not None:
            client.set_registered_model_alias(onnx_name, alias, twin_version)
        return PromotionResult(
            name,
            version,
            onnx_name,
            twin_version,
            alias,
            stage,
            reused,
            None,
            {"passed": True, "rows": 5.0},
        )


def fake_source_versions(name: str, count: int, client: MlflowClient | None = None) -> None:
    """Registered model ``name`` with ``count`` versions whose artifacts are never read."""
    client = client or MlflowClient()
    client.create_registered_model(name)
    for i in range(count):
        client.create_model_version(name, source=f"s3://fake-bucket/{name}/src{i + 1}")


# --------------------------------------------------------------------------- processes
RECEIVER_CMD = [
    sys.executable,
    "-c",
    "from mlflow_deploy_plugins.registry.cli import webhooks_group; webhooks_group()",
]


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(args: list[str], env: dict, log_path) -> subprocess.Popen:
    """Start ``args`` in its own session (so it and its children are stopped together)."""
    log = open(log_path, "wb")  # noqa: SIM115 (closed by stop_process)
    proc = subprocess.Popen(
        args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.log_file, proc.log_path = log, log_path
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> int:
    """SIGTERM the process group, SIGKILL it after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    proc.log_file.close()
    return proc.returncode


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``url`` answers 200; fail with the process log if it exits or times out."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    log = process_log(proc)[-4000:]
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s; log:\n{log}")


def process_log(proc: subprocess.Popen) -> str:
    if not proc.log_file.closed:
        proc.log_file.flush()
    with open(proc.log_path, errors="replace") as f:
        return f.read()
