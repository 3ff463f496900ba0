"""The onnx-docker target through MLflow's public API and CLI, against a real Docker engine.

Unit tests (config, help, options, errors before Docker is touched) run anywhere; the ``docker``
ones create real images and containers on the local base image, on free 127.0.0.1 ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import triton_grpc
from docker_support import BASE_IMAGE, TEST_REPOSITORY, remove_deployment_containers
from helpers import CATEGORICAL, NUMERIC
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from onnx_docker_support import Load, churn_registry, corrupt_bundles

from mlflow_deploy_plugins.targets import _container, _deployments, _endpoints, onnx_docker
from mlflow_deploy_plugins.targets._container import container_options, serving_environment
from mlflow_deploy_plugins.targets.onnx_docker import OnnxDockerConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "targets" / "onnx-docker.md"
RUN = uuid.uuid4().hex[:6]


def error_code(info) -> str:
    return info.value.error_code


# --- without an engine ---------------------------------------------------------------------


def test_mlflow_loads_the_plugin():
    client = get_deploy_client("onnx-docker")
    assert isinstance(client, onnx_docker.OnnxDockerDeploymentClient)
    assert get_deploy_client("onnx-docker:/unix:///var/run/docker.sock").base_url == (
        "unix:///var/run/docker.sock"
    )


def test_target_help_and_docs_are_generated_from_the_config():
    text = onnx_docker.target_help()
    assert OnnxDockerConfig.help_table() in text
    for key in ("port", "host", "network_mode", "user", "auth_token_file", "payload_log_dir"):
        assert f"  {key} (" in text
    assert OnnxDockerConfig.markdown_table() in DOCS.read_text(), (
        "docs/targets/onnx-docker.md must contain OnnxDockerConfig.markdown_table() verbatim"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "help", "-t", "onnx-docker"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert OnnxDockerConfig.help_table() in done.stdout


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"prot": "8080"}, "Unknown config key 'prot'"),
        ({"port": "http"}, "'port' of target 'onnx-docker': expected an integer, got 'http'"),
        ({"port": "0"}, "'port' of target 'onnx-docker'='0': must be between 1 and 65535"),
        # serving settings obey the runtime's own rule, and the message names the -C key
        ({"workers": "0"}, "'workers' of target 'onnx-docker'='0': must be >= 1"),
        ({"payload_log_sample_rate": "2"}, "'payload_log_sample_rate'.*must be between 0 and 1"),
        ({"max_batch_time_ms": "-1"}, "'max_batch_time_ms'.*must be >= 0"),
        ({"network_mode": "overlay"}, "must be one of host, bridge"),
        ({"user": "nobody"}, "'user'.*='nobody': must be UID:GID"),
        ({"memory": "lots"}, "'memory'.*='lots': must be a size like 512m"),
        ({"cpus": "0"}, "'cpus'.*='0': must be > 0"),
        ({"restart_policy": "sometimes"}, "must be one of no, on-failure"),
        ({"rebuild": "maybe"}, "'rebuild' of target 'onnx-docker': expected a boolean"),
    ],
)
def test_bad_config_is_rejected_before_docker_is_touched(monkeypatch, config, fragment):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    client = get_deploy_client("onnx-docker")
    with pytest.raises(MlflowException, match=fragment) as info:
        client.create_deployment("x", "models:/m/1", config=config)
    assert error_code(info) == "INVALID_PARAMETER_VALUE"


def test_update_and_delete_check_the_config_before_docker(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    client = get_deploy_client("onnx-docker")
    for call in (client.update_deployment, client.delete_deployment):
        with pytest.raises(MlflowException, match="Unknown config key 'bogus'") as info:
            call("x", config={"bogus": "1"})
        assert error_code(info) == "INVALID_PARAMETER_VALUE"


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(MlflowException) as info:
        OnnxDockerConfig.from_config({"bogus": "1"})
    assert "Known keys:" in info.value.message and "payload_log_dir" in info.value.message


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 70, "é"])
def test_invalid_names_are_rejected(name):
    with pytest.raises(MlflowException, match="Deployment name") as info:
        get_deploy_client("onnx-docker").create_deployment(name, "models:/m/1")
    assert error_code(info) == "INVALID_PARAMETER_VALUE"


def test_other_flavors_are_refused():
    with pytest.raises(MlflowException, match="serves ONNX"):
        get_deploy_client("onnx-docker").create_deployment("x", "models:/m/1", flavor="sklearn")


def test_docker_not_running_says_how_to_start_it(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    client = get_deploy_client("onnx-docker")
    with pytest.raises(MlflowException) as info:
        client.list_deployments()
    message = info.value.message
    assert "Docker is not running" in message and "unix:///nonexistent/docker.sock" in message
    assert "systemctl start docker" in message
    assert error_code(info) == "TEMPORARILY_UNAVAILABLE"


def test_container_options_host_mode_are_hardened(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = OnnxDockerConfig.from_config(
        {
            "port": "9000",
            "workers": "2",
            "memory": "512m",
            "cpus": "1.5",
            "auth_token_file": str(token),
            "payload_log_dir": str(tmp_path / "log"),
            "max_batch_size": "32",
        }
    )
    env = serving_environment(cfg, 9000, container_port=8080, takeover=2)
    opts = container_options(cfg, 9000, env, container_port=8080)
    env = opts["environment"]
    assert opts["network_mode"] == "host" and "ports" not in opts
    assert env["MLFLOW_DEPLOY_HOST"] == "127.0.0.1" and env["MLFLOW_DEPLOY_PORT"] == "9000"
    assert env["MLFLOW_DEPLOY_REUSE_PORT"] == "true"
    assert env["MLFLOW_DEPLOY_REUSE_PORT_TAKEOVER"] == "2"
    assert env["MLFLOW_DEPLOY_WORKERS"] == "2" and env["MLFLOW_DEPLOY_MAX_BATCH_SIZE"] == "32"
    # the token travels as a read-only file, never as an environment variable
    assert "MLFLOW_DEPLOY_AUTH_TOKEN" not in env
    assert env["MLFLOW_DEPLOY_AUTH_TOKEN_FILE"] == _container.TOKEN_PATH
    assert opts["volumes"][str(token)] == {"bind": _container.TOKEN_PATH, "mode": "ro"}
    assert opts["volumes"][str(tmp_path / "log")]["mode"] == "rw"
    assert opts["read_only"] is True and "/tmp" in opts["tmpfs"]
    assert opts["cap_drop"] == ["ALL"] and opts["security_opt"] == ["no-new-privileges:true"]
    assert opts["user"] == "10001:10001" and opts["init"] is True
    assert opts["mem_limit"] == "512m" and opts["nano_cpus"] == 1_500_000_000
    assert opts["restart_policy"] == {"Name": "unless-stopped"}


def test_container_options_bridge_mode_publish_on_host():
    cfg = OnnxDockerConfig.from_config(
        {"network_mode": "bridge", "host": "0.0.0.0", "port": "9001", "restart_policy": "no"}
    )
    env = serving_environment(cfg, 9001, container_port=8080, takeover=1)
    opts = container_options(cfg, 9001, env, container_port=8080)
    assert opts["network_mode"] == "bridge"
    assert opts["ports"] == {"8080/tcp": ("0.0.0.0", 9001)}
    env = opts["environment"]
    assert env["MLFLOW_DEPLOY_HOST"] == "0.0.0.0" and env["MLFLOW_DEPLOY_PORT"] == "8080"
    assert "MLFLOW_DEPLOY_REUSE_PORT_TAKEOVER" not in env
    assert "restart_policy" not in opts


def test_grpc_port_reaches_the_runtime_and_is_published_in_bridge_mode():
    host = OnnxDockerConfig.from_config({"port": "9001", "grpc_port": "9002"})
    env = serving_environment(host, 9001, container_port=8080)
    assert env["MLFLOW_DEPLOY_GRPC_PORT"] == "9002"
    bridge = OnnxDockerConfig.from_config(
        {"network_mode": "bridge", "port": "9001", "grpc_port": "9002"}
    )
    env = serving_environment(bridge, 9001, container_port=8080)
    assert env["MLFLOW_DEPLOY_GRPC_PORT"] == str(_container.GRPC_CONTAINER_PORT)
    opts = container_options(bridge, 9001, env, container_port=8080)
    assert opts["ports"][f"{_container.GRPC_CONTAINER_PORT}/tcp"] == ("127.0.0.1", 9002)
    plain = OnnxDockerConfig.from_config({"port": "9001"})
    assert "MLFLOW_DEPLOY_GRPC_PORT" not in serving_environment(plain, 9001, container_port=8080)


def test_unreadable_token_file_is_refused_before_building(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret")
    token.chmod(0o600)  # owner only: whoever runs the tests, not uid 4242
    cfg = OnnxDockerConfig.from_config({"auth_token_file": str(token), "user": "4242:4242"})
    with pytest.raises(MlflowException, match="not readable by the container user 4242:4242"):
        _container.prepare_host_paths(cfg)


# --- against the engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(docker_client, base_image):
    deploy = get_deploy_client("onnx-docker")
    lines: list[str] = []
    deploy.progress = lines.append
    deploy.lines = lines
    names: list[str] = []
    deploy.created = names
    yield deploy
    remove_deployment_containers(docker_client, names)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A store with a source sklearn model (v1, v2) and the ONNX twin of v1 (@champion)."""
    with churn_registry(tmp_path_factory.mktemp("store"), RUN) as found:
        yield found


def config(port: int, **extra) -> dict[str, str]:
    return {
        "port": str(port),
        "base_image": BASE_IMAGE,
        "image_repository": TEST_REPOSITORY,
        "ready_timeout": "90",
        "stop_timeout": "10",
        **{k: str(v) for k, v in extra.items()},
    }


def new_name(client, prefix: str) -> str:
    name = f"{prefix}-{RUN}-{uuid.uuid4().hex[:4]}"
    client.created.append(name)
    return name


@pytest.fixture(scope="module")
def source_deployment(client, registry):
    """A deployment of the SOURCE sklearn version 1 (converted at deploy time)."""
    name = new_name(client, "src")
    port = _endpoints.free_port()
    started = time.monotonic()
    info = client.create_deployment(name, f"models:/{registry['name']}/1", config=config(port))
    info["create_seconds"] = time.monotonic() - started
    return info


def mlflow_cli(*args, env_uri: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=env_uri)
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def v2_probabilities(port: int, model: str, frame) -> np.ndarray:
    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    inputs = []
    for column in NUMERIC:
        tensor = httpclient.InferInput(column, [len(frame), 1], "FP64")
        tensor.set_data_from_numpy(frame[[column]].to_numpy(np.float64))
        inputs.append(tensor)
    for column in CATEGORICAL:
        tensor = httpclient.InferInput(column, [len(frame), 1], "BYTES")
        tensor.set_data_from_numpy(frame[[column]].to_numpy(object))
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("probabilities")]
    result = triton.infer(model, inputs, outputs=outputs)
    return result.as_numpy("probabilities")


@pytest.mark.docker
def test_create_from_a_source_model_serves_its_predictions(client, registry, source_deployment):
    info = source_deployment
    assert info["status"] == "running" and info["flavor"] == "onnx"
    assert info["source_model"] == registry["name"] and info["source_version"] == "1"
    assert info["deployed_model"].startswith("(converted at deploy time")
    assert any("step 1/" in line for line in client.lines) or any(
        "reusing" in line for line in client.lines
    )
    assert any("over the base" in line for line in client.lines)

    frame = registry["x"].head(7)
    model = registry["models"]["1"]
    result = client.predict(info["name"], frame)
    assert result["predictions"] == model.predict(frame).tolist()
    probabilities = v2_probabilities(info["port"], info["served_model"], frame)
    np.testing.assert_allclose(probabilities, model.predict_proba(frame), atol=1e-6)


@pytest.mark.docker
@pytest.mark.parametrize(
    "orient",
    ["records", "scoring:dataframe_split", "scoring:dataframe_records", "scoring:params"],
)
def test_predict_through_the_mlflow_cli(registry, source_deployment, tmp_path, orient):
    """The CLI reads --input-path with pandas.read_json: records, and also the scoring JSON
    that ``mlflow models predict`` and /invocations take (read by pandas as a frame of its keys)."""
    frame = registry["x"].head(5)
    expected = registry["models"]["1"].predict(frame).tolist()
    if orient == "records":
        text = frame.to_json(orient="records")
    elif orient == "scoring:dataframe_records":
        text = '{"dataframe_records": ' + frame.to_json(orient="records") + "}"
    else:
        text = '{"dataframe_split": ' + frame.to_json(orient="split", index=False)
        if orient == "scoring:params":  # the source's probabilities, by MLflow's params
            text += ', "params": {"predict_method": "predict_proba"}'
            expected = registry["models"]["1"].predict_proba(frame)
        text += "}"
    (tmp_path / "in.json").write_text(text)
    done = mlflow_cli(
        "predict",
        "-t",
        "onnx-docker",
        "--name",
        source_deployment["name"],
        "--input-path",
        str(tmp_path / "in.json"),
        "--output-path",
        str(tmp_path / "out.json"),
        env_uri=registry["uri"],
    )
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    if orient == "scoring:params":
        np.testing.assert_allclose(out["predictions"], expected, atol=1e-6)
    else:
        assert out["predictions"] == expected


@pytest.mark.docker
def test_get_and_list_read_the_truth_from_docker(client, docker_client, source_deployment):
    name = source_deployment["name"]
    got = client.get_deployment(name)
    for key in ("name", "model_uri", "source_version", "sha256", "image", "endpoint_url"):
        assert got[key] == source_deployment[key]
    assert name in [d["name"] for d in client.list_deployments()]

    container = docker_client.containers.get(got["container"])
    host_config = container.attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges:true"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert container.attrs["Config"]["User"] == "10001:10001"
    labels = container.labels
    assert labels["mlflow_deploy.deployment"] == name
    assert labels["mlflow_deploy.source_version"] == "1"
    assert labels["mlflow_deploy.port"] == str(source_deployment["port"])
    image = docker_client.images.get(got["image"])
    oci = image.labels
    assert oci["org.opencontainers.image.title"] == got["served_model"]
    assert oci["org.opencontainers.image.version"] == got["served_version"]
    assert oci["org.opencontainers.image.revision"] == got["source_run"]
    assert oci["mlflow_deploy.sha256"] == got["sha256"]


@pytest.mark.docker
def test_create_an_onnx_twin_with_the_cli_then_delete_twice(client, docker_client, registry):
    name = new_name(client, "twin")
    port = _endpoints.free_port()
    args = ["-C", f"port={port}", "-C", f"base_image={BASE_IMAGE}"]
    args += ["-C", f"image_repository={TEST_REPOSITORY}", "-C", "stop_timeout=5"]
    model_uri = f"models:/{registry['onnx_name']}@champion"
    done = mlflow_cli(
        "create", "-t", "onnx-docker", "--name", name, "-m", model_uri, *args,
        env_uri=registry["uri"],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"onnx deployment {name} is created" in done.stdout
    assert "MB" in done.stderr and "ready in" in done.stderr

    got = mlflow_cli("get", "-t", "onnx-docker", "--name", name, env_uri=registry["uri"])
    assert got.returncode == 0, got.stderr
    info = client.get_deployment(name)
    assert info["deployed_model"] == registry["onnx_name"] and info["deployed_version"] == "1"
    assert info["source_model"] == registry["name"] and info["source_version"] == "1"
    assert info["model_uri"] == model_uri
    assert registry["onnx_name"] in got.stdout

    image = info["image"]
    listed = mlflow_cli("list", "-t", "onnx-docker", env_uri=registry["uri"])
    assert listed.returncode == 0 and name in listed.stdout
    frame = registry["x"].head(3)
    assert client.predict(name, frame)["predictions"] == (
        registry["models"]["1"].predict(frame).tolist()
    )

    for _ in range(2):  # idempotent
        deleted = mlflow_cli(
            "delete", "-t", "onnx-docker", "--name", name, "-C", "remove_image=true",
            env_uri=registry["uri"],
        )  # fmt: skip
        assert deleted.returncode == 0, deleted.stderr
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    with pytest.raises(MlflowException) as info:
        client.get_deployment(name)
    assert error_code(info) == "RESOURCE_DOES_NOT_EXIST"
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)


@pytest.mark.docker
def test_update_under_load_fails_no_request(client, docker_client, registry):
    name = new_name(client, "upd")
    port = _endpoints.free_port()
    model_uri = f"models:/{registry['name']}/1"
    client.create_deployment(name, model_uri, config=config(port))
    frame = registry["x"]
    started = time.monotonic()
    with Load(port, registry["name"], frame) as load:
        for version in ("2", "1", "2"):
            client.update_deployment(name, f"models:/{registry['name']}/{version}")
    seconds = time.monotonic() - started
    assert load.failed == [], f"{len(load.failed)} of {load.ok} requests failed: {load.failed[:5]}"
    assert load.ok > 100 and set(load.versions) == {"1", "2"}, load.versions
    print(f"3 updates in {seconds:.1f} s under load: {load.ok} requests, 0 failed")

    info = client.get_deployment(name)
    assert info["source_version"] == "2" and info["container"] == f"mlflow-deploy-{name}"
    containers = docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    assert [c.name for c in containers] == [f"mlflow-deploy-{name}"]

    # config only: the image is reused, the remembered config is merged with the new keys
    info = client.update_deployment(name, config={"workers": 2, "max_batch_size": "16"})
    assert info["config"]["workers"] == 2 and info["config"]["max_batch_size"] == 16
    assert info["source_version"] == "2" and info["config"]["port"] == port
    env = docker_client.containers.get(info["container"]).attrs["Config"]["Env"]
    assert "MLFLOW_DEPLOY_WORKERS=2" in env and "MLFLOW_DEPLOY_MAX_BATCH_SIZE=16" in env
    assert client.predict(name, frame.head(2))["predictions"] == (
        registry["models"]["2"].predict(frame.head(2)).tolist()
    )
    client.delete_deployment(name, config={"remove_image": "true"})


@pytest.mark.docker
def test_update_to_a_broken_model_keeps_the_old_version_serving(
    client, docker_client, registry, source_deployment, monkeypatch
):
    name = source_deployment["name"]
    corrupt_bundles(monkeypatch)
    images_before = {i.id for i in docker_client.images.list(name=TEST_REPOSITORY)}
    load = Load(source_deployment["port"], registry["name"], registry["x"])
    with load, pytest.raises(MlflowException) as info:
        client.update_deployment(name, f"models:/{registry['name']}/2")
    message = info.value.message
    assert "previous version keeps serving" in message
    assert "refusing to serve" in message  # the new container's own log
    assert load.failed == [] and load.ok > 50 and set(load.versions) == {"1"}

    got = client.get_deployment(name)
    assert got["source_version"] == "1" and got["status"] == "running"
    containers = docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    assert len(containers) == 1
    assert {i.id for i in docker_client.images.list(name=TEST_REPOSITORY)} <= images_before


@pytest.mark.docker
def test_a_crash_at_start_shows_the_logs_and_leaves_nothing(
    client, docker_client, registry, monkeypatch
):
    corrupt_bundles(monkeypatch)
    name = new_name(client, "crash")
    images_before = {i.id for i in docker_client.images.list(name=TEST_REPOSITORY)}
    with pytest.raises(MlflowException) as info:
        client.create_deployment(
            name, f"models:/{registry['name']}/2", config=config(_endpoints.free_port())
        )
    assert "exited at start" in info.value.message
    assert "refusing to serve" in info.value.message
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    assert {i.id for i in docker_client.images.list(name=TEST_REPOSITORY)} <= images_before


@pytest.mark.docker
def test_port_in_use_is_reported_before_building(client, registry, source_deployment):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        client.lines.clear()
        started = time.monotonic()
        with pytest.raises(MlflowException, match=f"Port {port} on 127.0.0.1 is already in use"):
            client.create_deployment(
                new_name(client, "busy"), f"models:/{registry['name']}/1", config=config(port)
            )
        assert time.monotonic() - started < 5
        assert not any("step" in line or "Image" in line for line in client.lines)
    # a port held by one of our deployments names it
    with pytest.raises(MlflowException, match=source_deployment["name"]):
        client.create_deployment(
            new_name(client, "busy"),
            f"models:/{registry['name']}/1",
            config=config(source_deployment["port"]),
        )


@pytest.mark.docker
def test_an_existing_name_is_resource_already_exists(client, registry, source_deployment):
    with pytest.raises(MlflowException) as info:
        client.create_deployment(
            source_deployment["name"], f"models:/{registry['name']}/1", config=config(1)
        )
    assert error_code(info) == "RESOURCE_ALREADY_EXISTS"


@pytest.mark.docker
def test_an_unknown_model_uri_is_resource_does_not_exist(client, docker_client, registry):
    name = new_name(client, "nomodel")
    with pytest.raises(MlflowException) as info:
        client.create_deployment(
            name, "models:/no-such-model/1", config=config(_endpoints.free_port())
        )
    assert error_code(info) == "RESOURCE_DOES_NOT_EXIST"
    assert "no-such-model" in info.value.message
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )


@pytest.mark.docker
def test_grpc_port_serves_tritonclient_grpc_from_the_container(client, docker_client, registry):
    # tritonclient.grpc runs in a child process: it cannot be imported beside MLServer
    name = new_name(client, "grpc")
    port, grpc_port = _endpoints.free_port(), _endpoints.free_port()
    info = client.create_deployment(
        name, f"models:/{registry['name']}/1", config=config(port, grpc_port=grpc_port)
    )
    assert info["config"]["grpc_port"] == grpc_port
    frame = registry["x"].head(6)
    result = triton_grpc.run(
        "infer",
        port=grpc_port,
        model=info["served_model"],
        columns={c: frame[c].tolist() for c in NUMERIC + CATEGORICAL},
        strings=CATEGORICAL,
        outputs=["probabilities"],
        requested=["probabilities"],
        shape_2d=True,
    )
    probabilities = np.asarray(result["outputs"]["probabilities"]["data"])
    np.testing.assert_allclose(
        probabilities.reshape(len(frame), -1),
        registry["models"]["1"].predict_proba(frame),
        atol=1e-5,
    )
    client.delete_deployment(name, config={"remove_image": "true"})


@pytest.mark.docker
def test_auth_token_file_and_payload_log_volume(client, registry, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o400)
    os.chown(token, 10001, 10001)
    log_dir = tmp_path / "payloads"
    name = new_name(client, "auth")
    port = _endpoints.free_port()
    client.create_deployment(
        name,
        f"models:/{registry['name']}/1",
        config=config(port, auth_token_file=token, payload_log_dir=log_dir),
    )
    url = f"http://127.0.0.1:{port}/invocations"
    body = json.dumps({"dataframe_records": [registry["x"].iloc[0].to_dict()]}).encode()
    anonymous = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(anonymous, timeout=10)
    assert denied.value.code == 401
    frame = registry["x"].head(4)
    assert client.predict(name, frame)["predictions"] == (
        registry["models"]["1"].predict(frame).tolist()
    )
    client.delete_deployment(name)  # graceful stop flushes the payload log
    records = [
        json.loads(line)
        for path in log_dir.rglob("*")
        if path.is_file()
        for line in path.read_text().splitlines()
    ]
    assert len(records) >= 1


@pytest.mark.docker
def test_run_local_serves_in_the_foreground_until_interrupted(docker_client, base_image, registry):
    name = f"local-{RUN}"
    port = _endpoints.free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=registry["uri"])
    cmd = [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "onnx-docker"]
    cmd += ["--name", name, "-m", f"models:/{registry['name']}/1"]
    for key, value in config(port).items():
        cmd += ["-C", f"{key}={value}"]
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        _endpoints.wait_until(
            lambda: any("Ctrl+C stops it" in line for line in lines), 240, what="run-local"
        )
        assert _endpoints.http_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        assert docker_client.containers.list(filters={"label": f"mlflow_deploy.run_local={name}"})
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(10)
        assert any(line.startswith("Stopping") for line in lines), lines[-5:]
    finally:
        if process.poll() is None:
            process.kill()
        remove_deployment_containers(docker_client, [name])
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.run_local={name}"}
    )


@pytest.mark.docker
def test_zz_delete_removes_the_deployment_and_is_idempotent(
    client, docker_client, source_deployment
):
    name = source_deployment["name"]
    image = source_deployment["image"]
    client.delete_deployment(name, config={"remove_image": "true"})
    client.delete_deployment(name, config={"remove_image": "true"})
    assert not docker_client.containers.list(
        all=True, filters={"label": f"mlflow_deploy.deployment={name}"}
    )
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)


# --- bridge mode on a fake engine (this machine's engine runs without a bridge) -------------


class FakeContainer:
    def __init__(self, engine, image, name, labels, **options):
        self.engine, self.name, self.labels, self.options = engine, name, labels, options
        self.id = uuid.uuid4().hex
        self.attrs = {
            "State": {"Status": "created"},
            "Created": str(time.time_ns()),
            "Image": image,
        }

    @property
    def status(self):
        return self.attrs["State"]["Status"]

    @property
    def port(self):
        return self.options["ports"]["8080/tcp"][1]

    def start(self):
        failed = self.port in self.engine.failing_ports
        self.attrs["State"] = {"Status": "exited" if failed else "running", "ExitCode": int(failed)}
        self.engine.events.append(("start", self.port))

    def stop(self, timeout=None):
        self.attrs["State"]["Status"] = "exited"
        self.engine.events.append(("stop", self.port))

    def remove(self, force=False):
        self.engine.items.pop(self.id, None)
        self.engine.events.append(("remove", self.port))

    def reload(self):
        pass

    def logs(self, **kwargs):
        if self.status == "running":
            return b'{"msg":"Serving m v1 on http://0.0.0.0:8080 (pid 7)"}\n'
        return b"crashed at start\n"

    def rename(self, name):
        self.name = name


class FakeEngine:
    def __init__(self):
        self.items: dict[str, FakeContainer] = {}
        self.events: list[tuple] = []
        self.failing_ports: set[int] = set()
        self.containers = self

    def create(self, image, name, labels, **options):
        container = FakeContainer(self, image, name, labels, **options)
        self.items[container.id] = container
        return container

    def list(self, filters=None, **kwargs):  # all=True: the fake keeps every state
        def matches(c, f):
            key, _, value = f.partition("=")
            return key in c.labels and (not value or c.labels[key] == value)

        wanted = (filters or {}).get("label", [])
        return [c for c in self.items.values() if all(matches(c, f) for f in wanted)]

    def info(self):
        return {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}}


@pytest.fixture
def fake(monkeypatch):
    from mlflow_deploy_plugins.targets._images.builder import BuiltImage

    engine = FakeEngine()
    resolved = _deployments.ResolvedModel(
        "models:/m/1", None, "m", "1", "r", "", "", "m", "1", "ab" * 32
    )
    monkeypatch.setattr(_deployments, "resolve_model", lambda uri, path, **kw: resolved)
    monkeypatch.setattr(_endpoints, "http_ready", lambda url, timeout=1.0: True)
    monkeypatch.setattr(_endpoints, "port_in_use", lambda host, port: False)
    monkeypatch.setattr(_endpoints, "free_port", lambda host="127.0.0.1": 5555)
    client = get_deploy_client("onnx-docker")
    client.deployments.client = engine
    client.progress = lambda line: None
    image = BuiltImage("repo:tag", "sha256:x", 1, 0, True, 0.0)
    monkeypatch.setattr(client.deployments, "_image", lambda resolved, cfg: image)
    cfg = {"network_mode": "bridge", "port": "9100", "host": "0.0.0.0", "stop_timeout": "1"}
    client.create_deployment("b", "models:/m/1", config=cfg)
    engine.events.clear()
    return client, engine


def test_bridge_update_proves_the_new_version_on_a_scratch_port_then_swaps(fake):
    client, engine = fake
    info = client.update_deployment("b", "models:/m/1")
    assert engine.events == [
        ("start", 5555),  # trial run on a scratch port
        ("stop", 5555),
        ("remove", 5555),
        ("stop", 9100),  # the old one: the refusal window starts
        ("start", 9100),  # the new one on the real port
        ("stop", 9100),  # retiring the (already stopped) old container
        ("remove", 9100),
    ]
    assert info["container"] == "mlflow-deploy-b" and info["status"] == "running"
    assert len(engine.items) == 1


def test_bridge_update_that_fails_on_the_scratch_port_leaves_the_old_one_alone(fake):
    client, engine = fake
    engine.failing_ports.add(5555)
    with pytest.raises(MlflowException, match="previous version keeps serving"):
        client.update_deployment("b", "models:/m/1")
    assert engine.events == [("start", 5555), ("remove", 5555)]
    (old,) = engine.items.values()
    assert old.status == "running" and old.name == "mlflow-deploy-b"


def test_bridge_update_that_fails_on_the_real_port_restarts_the_old_one(fake, monkeypatch):
    client, engine = fake
    (old,) = engine.items.values()
    real_start = FakeContainer.start

    def start(self):  # the new container crashes, the old one starts again
        if self is not old:
            self.engine.failing_ports.add(9100)
        else:
            self.engine.failing_ports.discard(9100)
        real_start(self)

    monkeypatch.setattr(FakeContainer, "start", start)
    with pytest.raises(MlflowException, match="crashed at start"):
        client.update_deployment("b", "models:/m/1")
    assert engine.events[-3:] == [("start", 9100), ("remove", 9100), ("start", 9100)]
    assert list(engine.items.values()) == [old] and old.status == "running"
