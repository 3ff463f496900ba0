"""The mlserver target through MLflow's public API and CLI, against a real MLServer process (one
per session, started by the target: see conftest.py). Unit tests (config, help, bad input before
any server) run anywhere."""

from __future__ import annotations

import json
import shutil
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
from helpers import churn_frame
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlserver_support import COLUMNS, KEEPER, free_ports, mlserver_missing

from mlflow_deploy_plugins.targets import _mlserver_repo, mlserver
from mlflow_deploy_plugins.targets._mlserver_process import server_settings
from mlflow_deploy_plugins.targets._mlserver_repo import model_settings
from mlflow_deploy_plugins.targets.mlserver import MlserverConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "targets" / "mlserver.md"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def v2_body(frame, outputs=None) -> dict:
    inputs = []
    for column in frame.columns:
        values = frame[column].tolist()
        datatype = "BYTES" if frame[column].dtype == object else "FP64"
        inputs.append(
            {"name": column, "shape": [len(values)], "datatype": datatype, "data": values}
        )
    body = {"inputs": inputs}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


def post(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def probabilities(answer: dict, rows: int) -> np.ndarray:
    out = {o["name"]: o for o in answer["outputs"]}["probabilities"]
    assert out["shape"] == [rows, 2]
    return np.asarray(out["data"], dtype=float).reshape(rows, 2)


def expected_proba(mlserver_models, version: int, frame) -> np.ndarray:
    return np.asarray(
        mlserver_models.pyfuncs[version].predict(frame, params={"predict_method": "predict_proba"})
    ).reshape(len(frame), -1)[:, -2:]


# --- without a server ---------------------------------------------------------------------


def test_mlflow_loads_the_plugin_and_the_repository_from_the_target_uri(tmp_path):
    client = get_deploy_client(f"mlserver:{tmp_path}")
    assert isinstance(client, mlserver.MlserverDeploymentClient)
    assert client.deployments.root == tmp_path


def test_target_help_and_docs_are_generated_from_the_config():
    text = mlserver.target_help()
    assert MlserverConfig.help_table() in text
    for key in ("mode", "url", "port", "parallel_workers", "max_batch_size", "max_batch_time"):
        assert f"  {key} (" in text
    assert MlserverConfig.markdown_table() in DOCS.read_text(), (
        "docs/targets/mlserver.md must contain MlserverConfig.markdown_table() verbatim"
    )


def test_help_works_and_create_names_the_extra_without_mlserver(tmp_path):
    # MLServer made unimportable in a fresh interpreter: help still works, create says what to
    # install, before a model is resolved or a server started
    script = f"""
import sys
sys.modules["mlserver"] = None
from mlflow.deployments import get_deploy_client
from mlflow.deployments.cli import commands
client = get_deploy_client("mlserver:{tmp_path}")
try:
    client.create_deployment("x", "models:/nothing/1")
except Exception as e:
    print("ERROR:", e)
commands(["help", "-t", "mlserver"], standalone_mode=False)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR: The mlserver target needs MLServer" in done.stdout
    assert "pip install 'mlflow-deploy-plugins[mlserver]'" in done.stdout
    assert MlserverConfig.help_table() in done.stdout
    assert not any(tmp_path.iterdir()), "nothing is written when MLServer is missing"


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"prot": "8080"}, "Unknown config key 'prot'"),
        ({"port": "http"}, "'port' of target 'mlserver': expected an integer, got 'http'"),
        ({"port": "0"}, "'port' of target 'mlserver'='0': must be between 1 and 65535"),
        ({"mode": "cloud"}, "must be one of local, remote"),
        ({"parallel_workers": "-1"}, "'parallel_workers'.*must be >= 0"),
        ({"max_batch_time": "-1"}, "'max_batch_time'.*must be >= 0"),
        ({"debug": "maybe"}, "'debug' of target 'mlserver': expected a boolean"),
        ({"mode": "remote"}, "-C mode=remote needs -C url="),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path, config, fragment):
    client = get_deploy_client(f"mlserver:{tmp_path}")
    with pytest.raises(MlflowException, match=fragment) as info:
        client.create_deployment("x", "models:/m/1", config=config)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


def test_remote_mode_names_the_url_that_does_not_answer(tmp_path):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    client = get_deploy_client(f"mlserver:{tmp_path}")
    with pytest.raises(MlflowException, match=f"No MLServer answers at {url}") as info:
        client.create_deployment("x", "models:/m/1", config={"mode": "remote", "url": url})
    assert info.value.error_code == "TEMPORARILY_UNAVAILABLE"


def test_unknown_deployment_is_named(tmp_path):
    client = get_deploy_client(f"mlserver:{tmp_path}")
    for call in (client.get_deployment, client.update_deployment):
        with pytest.raises(
            MlflowException, match="No deployment named 'ghost' on mlserver"
        ) as info:
            call("ghost")
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException, match="No deployment named 'ghost'"):
        client.predict("ghost", churn_frame(2, 0))
    client.delete_deployment("ghost")  # idempotent


def test_settings_files_come_from_the_config(tmp_path):
    cfg = MlserverConfig.from_config(
        {"port": "9000", "max_batch_size": "16", "max_batch_time": "0.005", "metrics": "true"}
    )
    settings = server_settings(cfg, tmp_path)
    assert settings["http_port"] == 9000 and settings["grpc_port"] == 9001
    assert settings["metrics_port"] == 9002 and settings["metrics_endpoint"] == "/metrics"
    assert settings["parallel_workers"] == 0 and settings["debug"] is False
    model = model_settings("churn", "bundle-x", cfg)
    assert model["max_batch_size"] == 16 and model["max_batch_time"] == 0.005
    assert model["implementation"] == "mlflow_deploy_plugins.mlserver_runtime.OnnxRuntime"
    assert model["parameters"]["uri"] == "./bundle-x"
    assert model["parameters"]["extra"]["invocations"] == ["/v2/models/churn/invocations"]
    defaults = server_settings(MlserverConfig.from_config({}), tmp_path)
    assert defaults["metrics_endpoint"] is None


# --- against the session's MLServer ---------------------------------------------------------


@pytest.mark.mlserver
def test_create_then_predict_through_the_cli_and_a_stock_v2_client(
    mlserver, mlserver_models, store, tmp_path
):
    import tritonclient.http as httpclient

    info = mlserver.client.get_deployment(KEEPER)
    assert info["status"] == "READY"
    assert (info["deployed_model"], info["deployed_version"]) == ("churn-onnx", "1")
    assert info["endpoint_url"] == mlserver.url

    frame = churn_frame(7, seed=5)
    rows = tmp_path / "rows.json"
    rows.write_text(frame.to_json(orient="records"))
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "predict", "-t", mlserver.target_uri,
         "--name", KEEPER, "--input-path", str(rows)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    labels = mlserver_models.pyfuncs[1].predict(frame)
    assert json.loads(done.stdout.strip().splitlines()[-1])["predictions"] == labels.tolist()

    client = httpclient.InferenceServerClient(f"127.0.0.1:{mlserver.port}")
    assert client.is_model_ready(KEEPER)
    inputs = []
    for column in COLUMNS:
        values = frame[column].to_numpy()
        if values.dtype == object:
            tensor = httpclient.InferInput(column, [len(frame)], "BYTES")
            tensor.set_data_from_numpy(values.astype(object), binary_data=False)
        else:
            tensor = httpclient.InferInput(column, [len(frame)], "FP64")
            tensor.set_data_from_numpy(values.astype(np.float64), binary_data=False)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(KEEPER, inputs, outputs=outputs)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected_proba(mlserver_models, 1, frame), atol=1e-5
    )


@pytest.mark.mlserver
def test_two_deployments_share_one_server_and_update_keeps_answering(
    mlserver, mlserver_models, store
):
    name = unique("churn")
    pid = mlserver.server.pid()
    frame = churn_frame(5, seed=9)
    body = v2_body(frame)
    try:
        info = mlserver.client.create_deployment(name, "models:/churn-onnx/1")
        assert info["status"] == "READY" and info["endpoint_url"] == mlserver.url
        assert mlserver.server.pid() == pid, "a second deployment joins the running server"
        names = {d["name"] for d in mlserver.client.list_deployments()}
        assert {KEEPER, name} <= names

        v1 = expected_proba(mlserver_models, 1, frame)
        v2 = expected_proba(mlserver_models, 2, frame)
        assert not np.allclose(v1, v2, atol=1e-3), "the two versions must tell apart"
        status, answer = post(f"{mlserver.url}/v2/models/{name}/infer", body)
        assert status == 200
        np.testing.assert_allclose(probabilities(answer, 5), v1, atol=1e-5)

        # requests during the update: every one answered, by v1 then v2, never an error
        seen, errors, stop = [], [], threading.Event()

        def hammer():
            while not stop.is_set():
                status, answer = post(f"{mlserver.url}/v2/models/{name}/infer", body)
                if status != 200:
                    errors.append((status, answer))
                else:
                    seen.append(probabilities(answer, 5))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.3)
            updated = mlserver.client.update_deployment(name, "models:/churn-onnx/2")
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join(30)
        assert not errors, errors[:3]
        assert updated["deployed_version"] == "2" and updated["status"] == "READY"
        assert any(np.allclose(p, v1, atol=1e-5) for p in seen)
        assert np.allclose(seen[-1], v2, atol=1e-5)
        # the other deployment was not touched
        status, answer = post(f"{mlserver.url}/v2/models/{KEEPER}/infer", body)
        np.testing.assert_allclose(probabilities(answer, 5), v1, atol=1e-5)
        assert len(list((mlserver.repository / name).glob("bundle-*"))) == 1, "old bundle pruned"
    finally:
        mlserver.client.delete_deployment(name)
    assert name not in {d["name"] for d in mlserver.client.list_deployments()}
    assert not (mlserver.repository / name).exists()
    status, _ = post(f"{mlserver.url}/v2/models/{name}/infer", body)
    assert status == 404
    assert mlserver.server.pid() == pid, "the server stays while it has deployments"


def _corrupting_stage(original):
    """Stage the bundle, then flip one byte of its model file: MLServer's load (sha256 check
    in the runtime) fails for real."""

    def stage(self, name, resolved):
        folder = original(self, name, resolved)
        path = self.model_dir(name) / folder / "model.onnx"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return folder

    return stage


@pytest.mark.mlserver
def test_a_model_mlserver_cannot_load_is_reported_and_leaves_nothing(mlserver, store, monkeypatch):
    name = unique("broken")
    before = sorted(p.name for p in mlserver.repository.iterdir())
    monkeypatch.setattr(
        _mlserver_repo.Repository,
        "stage_bundle",
        _corrupting_stage(_mlserver_repo.Repository.stage_bundle),
    )
    with pytest.raises(MlflowException, match=f"MLServer could not load '{name}'") as info:
        mlserver.client.create_deployment(name, "models:/churn-onnx/1")
    assert "sha256" in info.value.message  # MLServer's (our runtime's) own reason
    assert sorted(p.name for p in mlserver.repository.iterdir()) == before
    index = _mlserver_repo.RepositoryApi(mlserver.url).index()
    assert index.get(name, {}).get("state") != "READY"
    assert mlserver.client.get_deployment(KEEPER)["status"] == "READY"


@pytest.mark.mlserver
def test_a_failed_update_keeps_the_old_version_serving(
    mlserver, mlserver_models, store, monkeypatch
):
    name = unique("keep")
    frame = churn_frame(4, seed=2)
    mlserver.client.create_deployment(name, "models:/churn-onnx/1")
    try:
        record = (mlserver.repository / name / "deployment.json").read_text()
        settings = (mlserver.repository / name / "model-settings.json").read_text()
        monkeypatch.setattr(
            _mlserver_repo.Repository,
            "stage_bundle",
            _corrupting_stage(_mlserver_repo.Repository.stage_bundle),
        )
        with pytest.raises(MlflowException, match=f"MLServer could not load '{name}'"):
            mlserver.client.update_deployment(name, "models:/churn-onnx/2")
        monkeypatch.undo()
        assert (mlserver.repository / name / "deployment.json").read_text() == record
        assert (mlserver.repository / name / "model-settings.json").read_text() == settings
        assert len(list((mlserver.repository / name).glob("bundle-*"))) == 1
        info = mlserver.client.get_deployment(name)
        assert info["status"] == "READY" and info["deployed_version"] == "1"
        status, answer = post(f"{mlserver.url}/v2/models/{name}/infer", v2_body(frame))
        assert status == 200
        np.testing.assert_allclose(
            probabilities(answer, 4), expected_proba(mlserver_models, 1, frame), atol=1e-5
        )
        predicted = mlserver.client.predict(name, frame)
        assert predicted["predictions"] == mlserver_models.pyfuncs[1].predict(frame).tolist()
    finally:
        mlserver.client.delete_deployment(name)


@pytest.mark.mlserver
def test_create_refuses_an_existing_name_and_a_taken_port(mlserver, store, tmp_path):
    with pytest.raises(MlflowException, match=f"Deployment '{KEEPER}' already exists") as info:
        mlserver.client.create_deployment(KEEPER, "models:/churn-onnx/1")
    assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"
    # another repository on the session server's port: its port is taken
    other = get_deploy_client(f"mlserver:{tmp_path / 'other'}")
    with pytest.raises(MlflowException, match=f"Port {mlserver.port} .* already in use") as info:
        other.create_deployment("x", "models:/churn-onnx/1", config={"port": str(mlserver.port)})
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    # the running server's settings cannot change under its deployments
    with pytest.raises(MlflowException, match="already runs with parallel_workers=0"):
        mlserver.client.create_deployment(
            "y", "models:/churn-onnx/1", config={"parallel_workers": "1"}
        )


@pytest.mark.mlserver
def test_adaptive_batching_answers_each_request_with_its_own_rows(mlserver, mlserver_models, store):
    name = unique("batched")
    mlserver.client.create_deployment(
        name, "models:/churn-onnx/1", config={"max_batch_size": "8", "max_batch_time": "0.05"}
    )
    try:
        frames = [churn_frame(rows, seed=rows) for rows in (1, 2, 3, 1, 2, 3)]
        answers: dict[int, tuple] = {}

        def send(i):
            answers[i] = post(f"{mlserver.url}/v2/models/{name}/infer", v2_body(frames[i]))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(frames))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for i, frame in enumerate(frames):
            status, answer = answers[i]
            assert status == 200, answer
            labels = {o["name"]: o for o in answer["outputs"]}["label"]
            assert labels["shape"][0] == len(frame)
            np.testing.assert_allclose(
                probabilities(answer, len(frame)),
                expected_proba(mlserver_models, 1, frame),
                atol=1e-5,
            )
    finally:
        mlserver.client.delete_deployment(name)


@pytest.mark.mlserver
def test_run_local_serves_in_the_foreground_until_interrupted(mlserver, mlserver_models, tmp_path):
    import os
    import signal

    from mlflow_deploy_plugins.targets._endpoints import port_in_use

    port = free_ports(3)  # gRPC and metrics take the next two
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlserver_models.uri)
    env["MLFLOW_REGISTRY_URI"] = mlserver_models.uri
    log = tmp_path / "run-local.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "mlserver",
             "--name", "try", "-m", "models:/churn-onnx/1", "-C", f"port={port}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    frame = churn_frame(3, seed=4)
    records = {"dataframe_records": json.loads(frame.to_json(orient="records"))}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                status, answer = post(f"http://127.0.0.1:{port}/invocations", records, timeout=5)
            except OSError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        # one model on the server: MLflow's /invocations answers at the root too
        assert answer["predictions"] == mlserver_models.pyfuncs[1].predict(frame).tolist()
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert "Serving 'try'" in log.read_text()
    assert not port_in_use("127.0.0.1", port), "the foreground server is stopped on Ctrl+C"


def test_the_runtime_inside_mlserver_imports_only_what_the_mlserver_extra_installs():
    # what importing the runtime adds to what importing MLServer imports (MLServer itself
    # brings pandas and pyarrow): none of the heavy stack, nothing outside the mlserver extra
    import importlib.util

    if importlib.util.find_spec("mlserver") is None:
        mlserver_missing("MLServer is not installed")  # a failure under CI=true
    script = (
        "import sys, mlserver, mlserver.handlers.custom, mlserver.utils, starlette.responses; "
        "before = set(sys.modules); import mlflow_deploy_plugins.mlserver_runtime; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - "
        "{'mlflow_deploy_plugins', 'onnxruntime', 'numpy', 'orjson'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.mlserver
def test_remote_mode_drives_an_existing_server_through_its_repository(
    mlserver, mlserver_models, store, tmp_path
):
    # a server someone else runs (started here as a user would), whose repository we can write
    from mlflow_deploy_plugins.targets._endpoints import free_port, http_ready

    repository = tmp_path / "shared-volume"
    repository.mkdir()
    port = free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                "metrics_port": free_port(), "parallel_workers": 0, "debug": False}  # fmt: skip
    (repository / "settings.json").write_text(json.dumps(settings))
    log = tmp_path / "remote.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", "from mlserver.cli import main; main()", "start",
             str(repository)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not http_ready(url + "/v2/health/live"):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client = get_deploy_client(f"mlserver:{repository}")
        config = {"mode": "remote", "url": url}
        # a model of the server that is not ours is never overwritten
        (repository / "theirs").mkdir()
        (repository / "theirs" / "model-settings.json").write_text('{"name": "theirs"}')
        with pytest.raises(MlflowException, match="did not create") as info:
            client.create_deployment("theirs", "models:/churn-onnx/1", config=config)
        assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert (repository / "theirs" / "model-settings.json").read_text() == '{"name": "theirs"}'
        shutil.rmtree(repository / "theirs")
        info = client.create_deployment("churn", "models:/churn-onnx/1", config=config)
        assert info["status"] == "READY" and info["endpoint_url"] == url
        frame = churn_frame(3, seed=8)
        assert client.predict("churn", frame)["predictions"] == (
            mlserver_models.pyfuncs[1].predict(frame).tolist()
        )
        # later calls need no -C keys: the repository knows its server
        updated = client.update_deployment("churn", "models:/churn-onnx/2")
        assert updated["deployed_version"] == "2"
        status, answer = post(f"{url}/v2/models/churn/infer", v2_body(frame))
        np.testing.assert_allclose(
            probabilities(answer, 3), expected_proba(mlserver_models, 2, frame), atol=1e-5
        )
        # one repository, one server: the local mode cannot take it over
        with pytest.raises(MlflowException, match="serves deployments of mode remote"):
            client.create_deployment("other", "models:/churn-onnx/1")
        client.delete_deployment("churn")  # the last one: the server stays
        assert server.poll() is None and http_ready(url + "/v2/health/live")
        assert "churn" not in _mlserver_repo.RepositoryApi(url).index()
        client.create_deployment("churn", "models:/churn-onnx/1", config=config)
        # the server goes away: get says so, predict names the URL, delete still cleans up
        server.terminate()
        server.wait(30)
        assert client.get_deployment("churn")["status"] == "UNAVAILABLE"
        with pytest.raises(MlflowException, match=f"no MLServer answers at {url}"):
            client.predict("churn", frame)
        client.delete_deployment("churn")
        assert client.list_deployments() == []
        assert not (repository / "churn").exists()
    finally:
        server.terminate()
        server.wait(30)
