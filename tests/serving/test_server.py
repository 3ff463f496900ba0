"""The serving runtime as a process: auth, payload log flushed on SIGTERM, graceful shutdown,
SO_REUSEPORT workers, a tampered bundle, the SageMaker contract and ``mlflow-deploy serve``."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlflow_deploy_plugins.core.payload_format import read_records

CLF = "churn-onnx"
INFER = f"/v2/models/{CLF}/infer"
TOKEN = "s3cret-token"


def records_body(frame) -> dict:
    return {"dataframe_records": frame.to_dict("records")}


def clean_error(reply, status: int) -> dict:
    assert reply.status == status, reply.text
    assert "Traceback" not in reply.text
    return reply.json()


# ====================================================================== auth
@pytest.fixture(scope="module")
def auth_server(served, start_server, kit):
    return start_server(
        served.clf_bundle, env=kit.server_env(MLFLOW_DEPLOY_AUTH_TOKEN=TOKEN), label="auth"
    )


def test_bearer_auth(auth_server, served, kit):
    frame = kit.churn_frame(3, seed=5)
    routes = [(INFER, kit.v2_columns_body(frame)), ("/invocations", records_body(frame))]
    for path, body in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            reply = auth_server.post(path, body, headers)
            doc = clean_error(reply, 401)
            assert reply.headers["www-authenticate"] == "Bearer", path
            assert "token" in (doc.get("error") or doc.get("message")), doc
        for scheme in ("Bearer", "bearer"):  # the auth scheme is case-insensitive (RFC 7235)
            reply = auth_server.post(path, body, {"Authorization": f"{scheme} {TOKEN}"})
            assert reply.status == 200, (path, scheme, reply.text)
    labels = served.onnx_pyfunc.predict(frame)
    reply = auth_server.post(
        "/invocations", records_body(frame), {"Authorization": f"Bearer {TOKEN}"}
    )
    assert reply.json()["predictions"] == np.asarray(labels).tolist()
    # metadata and metrics need the token; health probes (V2 server and model ready too) do not
    # /v2 is server metadata (Triton's "metadata" API group), not a health probe
    for path in ("/v2", f"/v2/models/{CLF}", "/metrics", "/version"):
        assert auth_server.get(path).status == 401, path
        assert auth_server.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{CLF}/ready",
        f"/v2/models/{CLF}/versions/1/ready",
        "/ping",
        "/health",
    ):
        assert auth_server.get(path).status == 200, path
    # model ready is open, but without the token a guessed name is answered like the real one
    for path in ("/v2/models/guess/ready", "/v2/models/guess/versions/7/ready"):
        reply = auth_server.get(path)
        assert reply.status == 200 and reply.json() == {"name": "guess", "ready": True}, path
        with_token = auth_server.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert with_token.status == 404, path
    assert auth_server.get(f"/v2/models/{CLF}/ready").json() == {"name": CLF, "ready": True}
    assert TOKEN not in auth_server.log()  # the secret never reaches the logs


# ====================================================================== payload log + SIGTERM
def test_payload_log_is_flushed_on_sigterm(served, start_server, kit, tmp_path):
    log_dir = tmp_path / "payloads"
    server = start_server(served.clf_bundle, "--payload-log", str(log_dir), label="payload-log")
    pool = kit.churn_frame(60, seed=11)
    sent = {}
    start = 0
    for i in range(25):
        frame = pool.iloc[start : start + 1 + i % 3]
        start += len(frame)
        rid = f"pl-{i}"
        if i % 2:
            reply = server.post("/invocations", records_body(frame), {"X-Request-Id": rid})
            assert reply.status == 200, reply.text
            labels = [int(v) for v in reply.json()["predictions"]]
        else:
            reply = server.post(INFER, kit.v2_columns_body(frame), {"X-Request-Id": rid})
            assert reply.status == 200, reply.text
            out = {o["name"]: o["data"] for o in reply.json()["outputs"]}
            labels = out["label"]
        assert reply.headers["x-request-id"] == rid
        sent[rid] = (frame, labels)
    assert server.post("/invocations", b"{", {"X-Request-Id": "bad"}).status == 400  # not logged

    assert server.stop(signal.SIGTERM) == 0
    assert not list(log_dir.glob("*.part")), "a graceful stop leaves no unfinished file"
    records = list(read_records(log_dir))
    assert len(records) == len(sent)
    by_id = {r["request_id"]: r for r in records}
    assert set(by_id) == set(sent)
    for rid, (frame, labels) in sent.items():
        record = by_id[rid]
        assert (record["model"], record["version"], record["n_rows"]) == (CLF, "1", len(frame))
        assert record["schema_version"] >= 1 and record["ts"]
        assert set(record["inputs"]) == set(kit.CLF_COLUMNS)
        for column in kit.CLF_COLUMNS:
            assert record["inputs"][column] == frame[column].tolist(), (rid, column)
        assert record["outputs"]["label"] == labels, rid
        proba = served.onnx_pyfunc.predict(frame, params={"predict_method": "predict_proba"})
        np.testing.assert_array_equal(np.float32(record["outputs"]["probabilities"]), proba)


# ====================================================================== graceful shutdown
def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_graceful_shutdown_answers_in_flight_requests(served, start_server, kit):
    server = start_server(served.clf_bundle, label="graceful")
    frame = kit.churn_frame(4, seed=3)
    body = json.dumps(records_body(frame)).encode()
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: {kit.HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    idle = socket.create_connection((kit.HOST, server.port), timeout=10)
    idle.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    busy = socket.create_connection((kit.HOST, server.port), timeout=10)
    busy.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert busy.recv(65536).startswith(b"HTTP/1.1 200")  # accepted and served
    busy.sendall(head + body[:10])  # in flight: the rest of the body comes after SIGTERM
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.alive(), "exited with a request in flight"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((kit.HOST, server.port), timeout=2)
    assert idle.recv(1) == b"", "idle keep-alive connections are closed at shutdown"
    busy.sendall(body[10:])
    response = _read_all(busy)
    busy.close()
    idle.close()
    status_line, _, rest = response.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 200 OK", response
    assert b"connection: close" in headers.lower()
    labels = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    assert json.loads(payload) == {"predictions": labels}
    assert server.proc.wait(15) == 0
    assert "Stopped" in server.log()


# ====================================================================== workers
def test_two_workers_share_the_port_and_stop_together(served, start_server, kit):
    server = start_server(served.clf_bundle, "--workers", "2", label="workers-2")
    match = re.search(r"Supervising 2 workers \(pids \[(\d+), (\d+)\]\)", server.log())
    assert match, server.log()
    pids = [int(match.group(1)), int(match.group(2))]
    frame = kit.churn_frame(2, seed=8)
    labels = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    prefixes = set()
    deadline = time.monotonic() + 10
    while len(prefixes) < 2 and time.monotonic() < deadline:
        reply = server.post("/invocations", records_body(frame))  # a new connection each time
        assert reply.status == 200 and reply.json()["predictions"] == labels
        prefixes.add(reply.headers["x-request-id"].rsplit("-", 1)[0])
    assert len(prefixes) == 2, "every request went to the same worker"
    assert server.stop(signal.SIGTERM) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
    assert server.log().count('"msg":"Stopped"') == 2


def test_worker_that_cannot_start_is_not_restarted_forever(served, start_server, kit):
    with socket.socket() as taken:  # a plain listener (no SO_REUSEPORT) holds the port
        taken.bind((kit.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(
            served.clf_bundle, "--workers", "2", label="port-taken", ready=False, port=port
        )
        try:
            code = server.proc.wait(20)
        except Exception:
            server.kill()
            raise AssertionError(f"still restarting workers after 20 s:\n{server.log()}") from None
    assert code == 1, server.log()
    assert "failed to start" in server.log()


# ====================================================================== tampered bundle
@pytest.mark.parametrize("workers", ["1", "2"])
def test_tampered_bundle_refuses_to_start(served, start_server, tmp_path, workers):
    bundle = tmp_path / "bundle"
    shutil.copytree(served.clf_bundle, bundle)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    server = start_server(
        str(bundle), "--workers", workers, label=f"tampered-{workers}", ready=False
    )
    try:
        code = server.proc.wait(30)
    except Exception:
        server.kill()
        raise AssertionError(f"a tampered bundle was served:\n{server.log()}") from None
    log = server.log()
    assert code != 0
    assert "sha256" in log and "refusing to serve" in log and str(model) in log
    assert "Traceback" not in log


def test_missing_bundle_is_a_clear_error(start_server, tmp_path):
    server = start_server(str(tmp_path / "nothing"), label="no-bundle", ready=False)
    assert server.proc.wait(30) == 2
    assert "is not a serving bundle" in server.log() and "Traceback" not in server.log()


def test_model_name_flag_overrides_the_manifest(served, start_server, kit):
    server = start_server(served.clf_bundle, "--model-name", "churn-svc", label="model-name")
    frame = kit.churn_frame(2, seed=9)
    reply = server.post("/v2/models/churn-svc/versions/1/infer", kit.v2_columns_body(frame))
    assert reply.status == 200 and reply.json()["model_name"] == "churn-svc", reply.text
    assert server.get("/v2/models/churn-svc").json()["name"] == "churn-svc"
    assert server.post(INFER, kit.v2_columns_body(frame)).status == 404


# ====================================================================== SageMaker, console script
def test_sagemaker_contract(served, start_server, kit):
    """``serve`` as the only positional argument, the model from the environment."""
    server = start_server(
        None,
        env=kit.server_env(MLFLOW_DEPLOY_BUNDLE_DIR=served.clf_bundle),
        label="sagemaker",
        ready_path="/ping",
    )
    assert server.argv[-3:-2] == ["serve"]
    assert server.get("/ping").status == 200
    frame = kit.churn_frame(5, seed=21)
    labels = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    reply = server.post("/invocations", frame.to_csv(index=False), {"Content-Type": "text/csv"})
    assert reply.status == 200 and reply.json() == {"predictions": labels}, reply.text
    reply = server.post("/invocations", {"dataframe_split": frame.to_dict("split")})
    assert reply.status == 200 and reply.json() == {"predictions": labels}, reply.text


def mlflow_deploy() -> str:
    script = Path(sys.executable).parent / "mlflow-deploy"
    return str(script) if script.exists() else shutil.which("mlflow-deploy")


def test_console_script_serves_a_registered_model(served, start_server, kit, tmp_path):
    env = kit.server_env(MLFLOW_TRACKING_URI=served.tracking_uri, TMPDIR=str(tmp_path))
    server = start_server(
        None,
        argv=[mlflow_deploy(), "serve", "models:/churn-onnx@champion"],
        env=env,
        label="mlflow-deploy-serve",
    )
    meta = server.get(f"/v2/models/{CLF}")
    assert meta.status == 200 and meta.json()["versions"] == ["1"]
    frame = kit.churn_frame(3, seed=4)
    labels = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    reply = server.post("/invocations", records_body(frame))
    assert reply.status == 200 and reply.json() == {"predictions": labels}, reply.text
    assert list(tmp_path.glob("mlflow-deploy-bundle-*")), "the bundle lives in TMPDIR while serving"
    assert server.stop() == 0
    assert not list(tmp_path.glob("mlflow-deploy-bundle-*")), "the temporary bundle is removed"


def test_console_script_refuses_an_unknown_model(served, start_server, kit, tmp_path):
    env = kit.server_env(MLFLOW_TRACKING_URI=served.tracking_uri, TMPDIR=str(tmp_path))
    server = start_server(
        None,
        argv=[mlflow_deploy(), "serve", "models:/nope@champion"],
        env=env,
        label="mlflow-deploy-nope",
        ready=False,
    )
    assert server.proc.wait(60) != 0
    assert "nope" in server.log() and "Traceback" not in server.log()
