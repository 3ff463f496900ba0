"""onnx-docker ``-C replicas=N``: a Docker Swarm service on a real single-node swarm.

The engine is made a swarm manager for this module (``docker swarm init`` on 127.0.0.1) and
leaves the swarm at the end when it was not in one before. What is checked is what swarm does,
read back from the engine: tasks, UpdateStatus, secrets, and requests to the replicas.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from docker_support import BASE_IMAGE, TEST_REPOSITORY
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from onnx_docker_support import Load, churn_registry, corrupt_bundles

from mlflow_deploy_plugins.targets import _endpoints, _swarm
from mlflow_deploy_plugins.targets.onnx_docker import OnnxDockerConfig

RUN = uuid.uuid4().hex[:6]
SERVICE_LABEL = "com.docker.swarm.service.name"


def test_replicas_need_host_network_mode_before_docker_is_asked():
    with pytest.raises(MlflowException) as info:
        OnnxDockerConfig.from_config({"replicas": "2", "network_mode": "bridge"})
    assert "replicas" in info.value.message and "network_mode=host" in info.value.message
    with pytest.raises(MlflowException, match="replicas"):
        OnnxDockerConfig.from_config({"replicas": "0"})


@pytest.fixture(scope="module")
def engine_state(docker_client):
    """The engine's swarm state before this module touched it."""
    return (docker_client.info().get("Swarm") or {}).get("LocalNodeState", "inactive")


@pytest.fixture(scope="module")
def swarm(docker_client, engine_state):
    """The engine as a single-node swarm manager (left again afterwards if it was not one)."""
    if engine_state == "inactive":
        docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    assert _swarm.is_manager(docker_client)
    yield docker_client
    if engine_state == "inactive":
        docker_client.swarm.leave(force=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with churn_registry(tmp_path_factory.mktemp("store"), RUN) as found:
        yield found


@pytest.fixture(scope="module")
def client(docker_client, base_image, swarm):  # swarm: its cleanup needs the manager
    deploy = get_deploy_client("onnx-docker")
    lines: list[str] = []
    deploy.progress = lines.append
    deploy.lines = lines
    names: list[str] = []
    yield deploy, names
    for name in names:  # whatever a failed test left
        for service in docker_client.services.list(
            filters={"label": f"mlflow_deploy.deployment={name}"}
        ):
            service.remove()


def config(port: int, **extra) -> dict[str, str]:
    return {
        "port": str(port),
        "replicas": "2",
        "base_image": BASE_IMAGE,
        "image_repository": TEST_REPOSITORY,
        "ready_timeout": "90",
        "stop_timeout": "10",
        **{k: str(v) for k, v in extra.items()},
    }


def invocations(port: int, frame, token: str | None = None):
    body = json.dumps({"dataframe_records": json.loads(frame.to_json(orient="records"))})
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body.encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["predictions"]


@pytest.mark.docker
def test_a_non_manager_engine_is_refused_with_what_to_do(docker_client, engine_state, registry):
    if engine_state != "inactive":
        pytest.skip(f"the engine is already in a swarm ({engine_state})")
    deploy = get_deploy_client("onnx-docker")
    with pytest.raises(MlflowException) as info:
        deploy.create_deployment(
            f"nomgr-{RUN}", f"models:/{registry['name']}/1", config=config(_endpoints.free_port())
        )
    assert "swarm manager" in info.value.message and "docker swarm init" in info.value.message
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.fixture(scope="module")
def replicated(swarm, client, registry, tmp_path_factory):
    """Deployment of source v1 as 2 replicas with a bearer token (a swarm secret)."""
    deploy, names = client
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text("swarm-s3cret\n")
    token.chmod(0o400)
    import os

    os.chown(token, 10001, 10001)
    name = f"swarm-{RUN}"
    names.append(name)
    port = _endpoints.free_port()
    info = deploy.create_deployment(
        name,
        f"models:/{registry['name']}/1",
        config=config(port, auth_token_file=token),
    )
    return {"name": name, "port": port, "token": "swarm-s3cret", "info": info}


@pytest.mark.docker
def test_create_runs_every_replica_behind_one_port(swarm, client, registry, replicated):
    deploy, _ = client
    info = replicated["info"]
    assert info["replicas"] == 2 and info["running_replicas"] == 2
    assert info["status"] == "running" and info["source_version"] == "1"
    service = swarm.services.get(info["service"])
    tasks = [t for t in service.tasks() if t["DesiredState"] == "running"]
    assert len(tasks) == 2 and {t["Status"]["State"] for t in tasks} == {"running"}

    frame = registry["x"].head(5)
    expected = registry["models"]["1"].predict(frame).tolist()
    assert invocations(replicated["port"], frame, replicated["token"]) == expected
    assert deploy.predict(replicated["name"], frame)["predictions"] == expected
    # every replica answers on the shared port: refused requests (new connection each) are
    # logged by the replica that answered them, so both logs show some
    marker = f"no-such-model-{uuid.uuid4().hex[:6]}"
    headers = {"Authorization": f"Bearer {replicated['token']}"}
    for _ in range(40):
        url = f"http://127.0.0.1:{replicated['port']}/v2/models/{marker}/infer"
        request = urllib.request.Request(url, b"{}", headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 404
    containers = swarm.containers.list(filters={"label": f"{SERVICE_LABEL}={info['service']}"})
    assert len(containers) == 2
    for _ in range(20):  # the access log is flushed every 0.2 s
        answered = [marker in c.logs().decode(errors="replace") for c in containers]
        if all(answered):
            break
        time.sleep(0.25)
    assert answered == [True, True], "a replica never answered on the shared port"
    assert deploy.get_deployment(replicated["name"])["running_replicas"] == 2
    assert [d["name"] for d in deploy.list_deployments()].count(replicated["name"]) == 1


@pytest.mark.docker
def test_the_token_is_a_swarm_secret_never_an_env_variable(swarm, replicated, registry):
    with pytest.raises(urllib.error.HTTPError) as denied:
        invocations(replicated["port"], registry["x"].head(1))
    assert denied.value.code == 401
    service = swarm.services.get(replicated["info"]["service"])
    spec = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert not any("swarm-s3cret" in e for e in spec.get("Env", []))
    (secret,) = spec["Secrets"]
    assert secret["File"]["Name"] == "mlflow-deploy-token" and secret["File"]["Mode"] == 0o400
    assert spec["ReadOnly"] is True and spec["CapabilityDrop"] == ["ALL"]
    assert spec["User"] == "10001:10001"


@pytest.mark.docker
def test_a_killed_replica_is_replaced_and_the_port_keeps_answering(swarm, replicated, registry):
    service_name = replicated["info"]["service"]
    victim = swarm.containers.list(filters={"label": f"{SERVICE_LABEL}={service_name}"})[0]
    victim.kill()
    frame = registry["x"].head(2)
    for _ in range(20):  # the other replica answers while swarm replaces the killed one
        invocations(replicated["port"], frame, replicated["token"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [
            c
            for c in swarm.containers.list(filters={"label": f"{SERVICE_LABEL}={service_name}"})
            if c.id != victim.id
            and (c.attrs["State"].get("Health") or {}).get("Status") == "healthy"
        ]
        if len(running) == 2:
            break
        time.sleep(1)
    assert len(running) == 2, "swarm did not bring the killed replica back"


@pytest.mark.docker
def test_update_rolls_replicas_one_by_one_under_load_and_reads_swarms_verdict(
    client, registry, replicated
):
    deploy, _ = client
    with Load(
        replicated["port"], registry["name"], registry["x"], token=replicated["token"]
    ) as load:
        info = deploy.update_deployment(replicated["name"], f"models:/{registry['name']}/2")
    assert load.failed == [], f"{len(load.failed)} of {load.ok} failed: {load.failed[:5]}"
    assert load.ok > 50 and set(load.versions) == {"1", "2"}, load.versions
    assert info["update_status"] == "completed" and info["source_version"] == "2"
    assert info["running_replicas"] == 2
    frame = registry["x"].head(3)
    assert invocations(replicated["port"], frame, replicated["token"]) == (
        registry["models"]["2"].predict(frame).tolist()
    )


@pytest.mark.docker
def test_an_update_swarm_rolls_back_is_an_error_and_the_old_version_serves(
    client, registry, replicated, monkeypatch
):
    deploy, _ = client
    corrupt_bundles(monkeypatch)
    with (
        Load(
            replicated["port"], registry["name"], registry["x"], token=replicated["token"]
        ) as load,
        pytest.raises(MlflowException) as info,
    ):
        deploy.update_deployment(replicated["name"], f"models:/{registry['name']}/1")
    message = info.value.message
    assert "rolled back" in message and "previous version keeps serving" in message, message
    assert "refusing to serve" in message  # the failed task's own log
    assert load.failed == [], load.failed[:5]
    got = deploy.get_deployment(replicated["name"])
    assert got["update_status"] == "rollback_completed" and got["source_version"] == "2"
    assert got["running_replicas"] == 2


@pytest.mark.docker
def test_an_unknown_name_is_resource_does_not_exist(client, registry):
    deploy, _ = client
    with pytest.raises(MlflowException) as info:
        deploy.update_deployment(f"absent-{RUN}", config={"replicas": "2"})
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.docker
def test_zz_delete_removes_service_containers_and_secret(swarm, client, replicated):
    deploy, _ = client
    service_name = replicated["info"]["service"]
    deploy.delete_deployment(replicated["name"])
    assert not swarm.services.list(filters={"name": service_name})
    assert not swarm.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service_name}"})
    assert not swarm.secrets.list(filters={"label": f"{_swarm.LABEL_SERVICE}={replicated['name']}"})
    assert not _endpoints.port_in_use("127.0.0.1", replicated["port"])
    with pytest.raises(MlflowException) as info:
        deploy.get_deployment(replicated["name"])
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    deploy.delete_deployment(replicated["name"])  # idempotent
