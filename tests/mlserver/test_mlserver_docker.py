"""The mlserver target's ``-C mode=docker``: an MLServer image (the one image builder, the
``MLSERVER`` recipe) run as a hardened container, against the real Docker engine.

Unit tests (keys, help, environment, recipe) run anywhere. The ``docker`` tests share ONE
deployment per module (its image is the one full build of the session; later images reuse the
build stage) and the session's registry (churn-onnx v1 and v2, conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from docker_support import (
    BASE_IMAGE,
    TEST_REPOSITORY,
    BackgroundClients,
    corrupt_bundles,
    remove_deployment_containers,
)
from helpers import churn_frame
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlserver_support import COLUMNS, free_ports, mlserver_missing, using_store

from mlflow_deploy_plugins.core.constants import (
    MLSERVER_MODEL_ENV,
    MLSERVER_SETTINGS_ENV,
    MLSERVER_TAKEOVER_ENV,
)
from mlflow_deploy_plugins.targets import _endpoints, mlserver
from mlflow_deploy_plugins.targets._images import recipes, wheels
from mlflow_deploy_plugins.targets._images.probe import ImagePlatform
from mlflow_deploy_plugins.targets._mlserver_docker import mlserver_environment
from mlflow_deploy_plugins.targets._mlserver_process import server_settings
from mlflow_deploy_plugins.targets.mlserver import MlserverConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "targets" / "mlserver.md"
DOCKER_KEYS = ("network_mode", "base_image", "user", "memory", "cpus", "restart_policy",
               "image_repository", "rebuild", "remove_image", "wheel_cache")  # fmt: skip


# --- without an engine ---------------------------------------------------------------------


def test_target_help_and_docs_list_the_docker_mode_keys():
    text = mlserver.target_help()
    assert "docker" in MlserverConfig.from_config({"mode": "docker"}).mode
    for key in DOCKER_KEYS:
        assert f"  {key} (" in text, key
        assert f"| `{key}` |" in DOCS.read_text(), key
    assert "mode=docker" in text and "SO_REUSEPORT" in text


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"base_image": "x"}, r"another mode than local.*base_image \(mode docker\)"),
        ({"mode": "remote", "url": "http://127.0.0.1:1", "memory": "1g"}, "memory"),
        ({"mode": "docker", "url": "http://127.0.0.1:1"}, r"url \(mode remote\)"),
        ({"mode": "docker", "network_mode": "overlay"}, "must be one of host, bridge"),
        ({"mode": "docker", "user": "root"}, "'user'.*must be UID:GID"),
    ],
)
def test_keys_of_another_mode_are_refused_before_anything_runs(tmp_path, config, fragment):
    client = get_deploy_client(f"mlserver:{tmp_path}")
    with pytest.raises(MlflowException, match=fragment) as info:
        client.create_deployment("x", "models:/nothing/1", config=config)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert not any(tmp_path.iterdir())


def test_the_container_gets_the_settings_local_mode_writes():
    cfg = MlserverConfig.from_config(
        {"mode": "docker", "port": "9100", "max_batch_size": "8", "intra_op_threads": "2"}
    )
    env = mlserver_environment(cfg, 9100, container_port=8080, takeover=1, deployment="churn")
    settings = json.loads(env[MLSERVER_SETTINGS_ENV])
    local = server_settings(cfg, Path("/anywhere"))
    assert settings == {k: v for k, v in local.items() if k != "model_repository_root"}
    assert settings["host"] == "127.0.0.1" and settings["http_port"] == 9100
    assert settings["parallel_workers"] == 0 and settings["metrics_endpoint"] is None
    assert settings["debug"] is False
    model = json.loads(env[MLSERVER_MODEL_ENV])
    assert model["name"] == "churn" and model["max_batch_size"] == 8
    assert model["implementation"] == "mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime"
    assert model["parameters"]["uri"] == "./bundle"
    assert model["parameters"]["extra"]["intra_op_threads"] == 2
    assert "/invocations" in model["parameters"]["extra"]["invocations"]  # one model per server
    assert env[MLSERVER_TAKEOVER_ENV] == "1"

    bridge = cfg.replace(network_mode="bridge", metrics=True)
    env = mlserver_environment(bridge, 9100, container_port=8080, takeover=1, deployment="c")
    settings = json.loads(env[MLSERVER_SETTINGS_ENV])
    assert (settings["host"], settings["http_port"]) == ("0.0.0.0", 8080)
    assert settings["metrics_endpoint"] == "/metrics"
    assert MLSERVER_TAKEOVER_ENV not in env  # bridge: no shared port, no steering


def test_the_mlserver_recipe_runs_our_entrypoint_as_non_root():
    text = recipes.MLSERVER.dockerfile(BASE_IMAGE, "pkg.whl", {"a": "b"})
    assert 'ENTRYPOINT ["python", "-m", "mlflow_deploy_plugins.mlserver_serve"]' in text
    assert f"USER {recipes.DEFAULT_USER}" in text and MLSERVER_SETTINGS_ENV in text
    assert recipes.MLSERVER.runtime_extra == "mlserver"
    # the same Dockerfile skeleton as onnx-docker's (one render function)
    onnx = recipes.ONNX_SERVING.dockerfile(BASE_IMAGE, "pkg.whl", {"a": "b"})
    assert text.split("FROM ")[1] == onnx.split("FROM ")[1]


def test_the_lock_follows_the_extras_of_a_requirement():
    pytest.importorskip("mlserver")
    lock = wheels.runtime_lock(ImagePlatform("3.11", ("manylinux_2_36_x86_64",)), "mlserver")
    names = {line.split("==")[0] for line in lock}
    assert {"mlserver", "onnxruntime", "httptools", "uvloop"} <= names
    # MLServer requires tritonclient[http]: its http extra (aiohttp, geventhttpclient) too
    assert {"tritonclient", "aiohttp", "geventhttpclient"} <= names


def test_the_entrypoint_loop_shares_the_port_and_says_when_it_listens(caplog):
    from mlflow_deploy_plugins.mlserver_serve import shared_port_loop

    pytest.importorskip("uvloop")
    port = _endpoints.free_port()

    async def listen():
        # what uvicorn does inside MLServer: create_server(host=, port=) on the running loop
        return await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host="127.0.0.1", port=port
        )

    caplog.set_level(logging.INFO)
    with (
        asyncio.Runner(loop_factory=shared_port_loop(port, None, "old")) as old,
        asyncio.Runner(loop_factory=shared_port_loop(port, 1, "new")) as new,
    ):
        first = old.run(listen())
        second = new.run(listen())  # the same port: SO_REUSEPORT on both
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            m.startswith(f"MLServer serving old on http://127.0.0.1:{port}") for m in messages
        )
        assert any(
            m.startswith(f"MLServer serving new on http://127.0.0.1:{port}") for m in messages
        )
        assert any("Taking over the port" in m for m in messages)  # only the new one steers
        first.close()
        second.close()


def test_the_entrypoint_refuses_a_container_without_its_settings():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_DEPLOY_MLSERVER")}
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_deploy_plugins.mlserver_serve"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert MLSERVER_SETTINGS_ENV in done.stderr and "set by the mlserver target" in done.stderr


# --- against the engine --------------------------------------------------------------------


def docker_config(port: int, **extra) -> dict[str, str]:
    return {
        "mode": "docker",
        "port": str(port),
        "base_image": BASE_IMAGE,
        "image_repository": TEST_REPOSITORY,
        "ready_timeout": "90",
        "stop_timeout": "10",
        **{k: str(v) for k, v in extra.items()},
    }


@pytest.fixture(scope="module")
def deployed(docker_client, base_image, mlserver_models, tmp_path_factory):
    """One docker-mode deployment of churn-onnx v1 (the image built once), its client."""
    import importlib.util

    if importlib.util.find_spec("mlserver") is None:
        mlserver_missing("MLServer is not installed (the image pins the host's versions)")
    repository = tmp_path_factory.mktemp("mlserver-docker")
    client = get_deploy_client(f"mlserver:{repository}")
    lines: list[str] = []
    client.progress = lines.append
    name = f"dk-{uuid.uuid4().hex[:6]}"
    port = free_ports(2)
    try:
        with using_store(mlserver_models.uri):
            started = time.monotonic()
            info = client.create_deployment(
                name, "models:/churn-onnx/1", config=docker_config(port)
            )
            seconds = time.monotonic() - started
        yield {
            "client": client,
            "name": name,
            "port": port,
            "info": info,
            "lines": lines,
            "seconds": seconds,
            "target_uri": f"mlserver:{repository}",
        }
    finally:
        remove_deployment_containers(docker_client, [name])


def v2_proba(port: int, name: str, frame) -> np.ndarray:
    """probabilities from a stock Open Inference Protocol client."""
    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = []
    for column in COLUMNS:
        values = frame[column].to_numpy()
        kind = "BYTES" if values.dtype == object else "FP64"
        tensor = httpclient.InferInput(column, [len(frame)], kind)
        tensor.set_data_from_numpy(
            values.astype(object if kind == "BYTES" else np.float64), binary_data=False
        )
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    return triton.infer(name, inputs, outputs=outputs).as_numpy("probabilities")


def expected(mlserver_models, version: int, frame) -> np.ndarray:
    proba = mlserver_models.pyfuncs[version].predict(
        frame, params={"predict_method": "predict_proba"}
    )
    return np.asarray(proba).reshape(len(frame), -1)[:, -2:]


class Polling(BackgroundClients):
    """Clients sending V2 requests (a new connection each) until stopped; which version
    answered is told by the probabilities."""

    def __init__(self, port: int, name: str, frame, versions: dict[int, np.ndarray]):
        self.url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
        inputs = [
            {"name": c, "shape": [len(frame)], "datatype": "BYTES" if frame[c].dtype == object
             else "FP64", "data": frame[c].tolist()}
            for c in COLUMNS
        ]  # fmt: skip
        self.body = json.dumps({"inputs": inputs}).encode()
        self.versions = versions
        self.seen: list[int] = []
        self.failed: list[str] = []
        super().__init__(self._run, self._run, self._run)

    def _run(self) -> None:
        while self.running():
            request = urllib.request.Request(
                self.url, self.body, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
            except (OSError, urllib.error.HTTPError) as e:
                self.failed.append(repr(e))
                continue
            out = {o["name"]: o for o in answer["outputs"]}["probabilities"]
            got = np.asarray(out["data"], dtype=float).reshape(-1, 2)
            match = [v for v, p in self.versions.items() if np.allclose(got, p, atol=1e-5)]
            self.seen.append(match[0] if match else -1)


@pytest.mark.docker
def test_create_serves_through_the_cli_and_a_stock_v2_client(
    deployed, mlserver_models, docker_client, tmp_path
):
    info, name, port = deployed["info"], deployed["name"], deployed["port"]
    assert info["status"] == "running" and info["config"]["mode"] == "docker"
    assert (info["deployed_model"], info["deployed_version"]) == ("churn-onnx", "1")
    assert info["container"] == f"mlflow-mlserver-{name}"
    assert any("over the base" in line for line in deployed["lines"])
    print(f"docker-mode create: {deployed['seconds']:.1f} s (build included)")

    frame = churn_frame(7, seed=5)
    rows = tmp_path / "rows.json"
    rows.write_text(frame.to_json(orient="records"))
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "predict", "-t", deployed["target_uri"],
         "--name", name, "--input-path", str(rows)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    labels = mlserver_models.pyfuncs[1].predict(frame)
    assert json.loads(done.stdout.strip().splitlines()[-1])["predictions"] == labels.tolist()
    np.testing.assert_allclose(
        v2_proba(port, name, frame), expected(mlserver_models, 1, frame), atol=1e-5
    )

    # get/list read the container (labels), which runs hardened like onnx-docker's
    client = deployed["client"]
    assert client.get_deployment(name)["image"] == info["image"]
    assert name in [d["name"] for d in client.list_deployments()]
    attrs = docker_client.containers.get(info["container"]).attrs
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == recipes.DEFAULT_USER and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
    assert host["NetworkMode"] == "host" and attrs["Config"]["Healthcheck"]["Test"]


@pytest.mark.docker
def test_an_existing_name_is_refused_in_either_mode(deployed):
    client, name = deployed["client"], deployed["name"]
    for config in (docker_config(deployed["port"]), {"port": str(free_ports(3))}):
        with pytest.raises(MlflowException, match=f"'{name}' already exists") as info:
            client.create_deployment(name, "models:/churn-onnx/2", config=config)
        assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"


@pytest.mark.docker
def test_update_while_clients_poll_fails_no_request(deployed, mlserver_models, docker_client):
    client, name, port = deployed["client"], deployed["name"], deployed["port"]
    frame = churn_frame(3, seed=11)
    versions = {v: expected(mlserver_models, v, frame) for v in (1, 2)}
    assert not np.allclose(versions[1], versions[2], atol=1e-3), "v1 and v2 must differ"
    start = client.get_deployment(name)["deployed_version"]
    order = ["2", "1"] if start == "1" else ["1", "2"]
    with using_store(mlserver_models.uri), Polling(port, name, frame, versions) as polling:
        for version in order:
            started = time.monotonic()
            info = client.update_deployment(name, f"models:/churn-onnx/{version}")
            print(f"update to v{version}: {time.monotonic() - started:.1f} s")
            assert info["deployed_version"] == version
    print(f"{len(order)} updates while polling: {len(polling.seen)} answered, "
          f"{len(polling.failed)} failed")  # fmt: skip
    assert polling.failed == [], f"{len(polling.failed)} failed: {polling.failed[:3]}"
    assert len(polling.seen) > 50 and set(polling.seen) == {1, 2}, set(polling.seen)
    # the version that answered last is the one deployed last
    assert polling.seen[-1] == int(order[-1])
    containers = docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    assert [c.name for c in containers] == [f"mlflow-mlserver-{name}"]


@pytest.mark.docker
def test_a_model_mlserver_cannot_load_leaves_the_old_one_serving(
    deployed, mlserver_models, docker_client, monkeypatch
):
    client, name, port = deployed["client"], deployed["name"], deployed["port"]
    before = client.get_deployment(name)
    frame = churn_frame(3, seed=12)
    versions = {v: expected(mlserver_models, v, frame) for v in (1, 2)}
    corrupt_bundles(monkeypatch)  # our runtime's sha256 check fails inside MLServer's load
    other = "2" if before["deployed_version"] == "1" else "1"
    polling = Polling(port, name, frame, versions)
    with using_store(mlserver_models.uri), polling, pytest.raises(MlflowException) as info:
        client.update_deployment(name, f"models:/churn-onnx/{other}")
    message = info.value.message
    assert "previous version keeps serving" in message
    assert "MLServer could not load the model" in message and "sha256" in message
    assert polling.failed == [] and len(polling.seen) > 5
    assert set(polling.seen) == {int(before["deployed_version"])}
    after = client.get_deployment(name)
    assert after["container_id"] == before["container_id"] and after["status"] == "running"
    containers = docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    assert len(containers) == 1


@pytest.mark.docker
def test_create_of_a_model_mlserver_cannot_load_leaves_nothing(
    deployed, mlserver_models, docker_client, monkeypatch
):
    client, name = deployed["client"], f"broken-{uuid.uuid4().hex[:6]}"
    images_before = {i.id for i in docker_client.images.list(name=TEST_REPOSITORY)}
    corrupt_bundles(monkeypatch)
    try:
        with using_store(mlserver_models.uri), pytest.raises(MlflowException) as info:
            client.create_deployment(
                name, "models:/churn-onnx/2", config=docker_config(free_ports(2))
            )
        message = info.value.message
        assert "exited at start" in message and "MLServer could not load the model" in message
        assert "sha256" in message
        assert not docker_client.containers.list(
            all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
        )
        assert {i.id for i in docker_client.images.list(name=TEST_REPOSITORY)} <= images_before
    finally:
        remove_deployment_containers(docker_client, [name])


@pytest.mark.docker
def test_run_local_in_docker_mode_serves_until_interrupted(
    deployed, mlserver_models, docker_client
):
    name = f"try-{uuid.uuid4().hex[:6]}"
    port = free_ports(2)
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlserver_models.uri)
    cmd = [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", deployed["target_uri"],
           "--name", name, "-m", "models:/churn-onnx/1"]  # fmt: skip
    for key, value in docker_config(port).items():
        cmd += ["-C", f"{key}={value}"]
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        _endpoints.wait_until(
            lambda: any("Ctrl+C stops it" in line for line in lines), 240, what="run-local"
        )
        frame = churn_frame(2, seed=3)
        np.testing.assert_allclose(
            v2_proba(port, name, frame), expected(mlserver_models, 1, frame), atol=1e-5
        )
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
        remove_deployment_containers(docker_client, [name])
    assert any(line.startswith("Stopping") for line in lines), lines[-5:]
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.run_local={name}"}
    )


@pytest.mark.docker
def test_an_unknown_name_is_named_in_every_mode(deployed):
    client = deployed["client"]
    for call in (client.get_deployment, client.update_deployment):
        with pytest.raises(MlflowException, match="No deployment named 'ghost'") as info:
            call("ghost")
        assert "no docker-mode container either" in info.value.message
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException, match="No deployment named 'ghost'"):
        client.predict("ghost", churn_frame(2, 0))
    client.delete_deployment("ghost")  # idempotent
    client.delete_deployment("ghost", config={"mode": "docker"})


@pytest.mark.docker
def test_zz_delete_removes_the_container_and_is_idempotent(deployed, docker_client):
    client, name = deployed["client"], deployed["name"]
    image = client.get_deployment(name)["image"]
    client.delete_deployment(name, config={"remove_image": "true"})
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    assert not docker_client.images.list(name=image)
    client.delete_deployment(name)
    with pytest.raises(MlflowException) as info:
        client.get_deployment(name)
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert not _endpoints.port_in_use("127.0.0.1", deployed["port"])
