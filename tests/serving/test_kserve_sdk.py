"""The kserve SDK's own inference clients against a real server: ``InferenceRESTClient`` (V2
REST, JSON and binary bodies) and ``InferenceGRPCClient`` (the Open Inference Protocol over gRPC,
raw and typed contents), unchanged, as a KServe user would call us.

They run in kserve's own venv (``tests/infra/kserve_sdk.sh``, pinned in
``tests/infra/kserve-sdk.txt``) through ``tests/kserve_sdk.py``: kserve cannot share the test
venv with MLServer. Every answer is compared with what our HTTP V2 route and the source model
say for the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import kserve_sdk
import numpy as np
import pytest

MODEL = "churn-onnx"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kserve_python() -> str:
    python = os.environ.get("KSERVE_PYTHON") or str(REPO / ".venv-kserve" / "bin" / "python")
    if not os.access(python, os.X_OK):
        reason = f"no kserve SDK venv at {python} (make it with: bash tests/infra/kserve_sdk.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def columns(frame) -> dict:
    return {c: frame[c].tolist() for c in frame.columns}


def http_v2(server, frame, kit) -> dict:
    """Our own HTTP V2 answer for ``frame``: output name -> flat data."""
    reply = server.post(f"/v2/models/{MODEL}/infer", kit.v2_columns_body(frame)).json()
    return {o["name"]: o["data"] for o in reply["outputs"]}


def check_like_v2_and_source(found: dict, expected: dict, served, frame) -> None:
    outputs = found["outputs"]
    assert set(outputs) == set(expected)
    np.testing.assert_allclose(
        np.asarray(outputs["probabilities"]["data"], np.float64),
        np.asarray(expected["probabilities"], np.float64),
        rtol=1e-6,
    )
    assert outputs["probabilities"]["shape"] == [
        len(frame),
        len(outputs["probabilities"]["data"]) // len(frame),
    ]
    source = np.asarray(served.source_pyfunc.predict(frame)).astype(int).tolist()
    assert np.asarray(outputs["label"]["data"]).astype(int).tolist() == source


# =================================================================================== REST
def test_rest_client_health_probes(kserve_python, grpc_server):
    url = f"http://127.0.0.1:{grpc_server.port}"
    found = kserve_sdk.run(kserve_python, "rest_health", url=url, model=MODEL)
    assert found["live"] is True and found["ready"] is True and found["model_ready"] is True
    # An unknown model: our 404, which the SDK reads as "not ready" (as against KServe's server).
    assert found["other_ready"] is False


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rest_client_infers_like_v2_and_the_source(kserve_python, grpc_server, served, kit, binary):
    frame = served.clf_frame.head(25)
    found = kserve_sdk.run(
        kserve_python,
        "rest_infer",
        url=f"http://127.0.0.1:{grpc_server.port}",
        model=MODEL,
        columns=columns(frame),
        strings=["city"],
        binary=binary,
        request_id=f"kserve-{binary}",
    )
    assert found["id"] == f"kserve-{binary}" and found["model"] == MODEL
    check_like_v2_and_source(found, http_v2(grpc_server, frame, kit), served, frame)


def test_rest_client_requested_outputs(kserve_python, grpc_server, served):
    frame = served.clf_frame.head(3)
    found = kserve_sdk.run(
        kserve_python,
        "rest_infer",
        url=f"http://127.0.0.1:{grpc_server.port}",
        model=MODEL,
        columns=columns(frame),
        strings=["city"],
        outputs=["probabilities"],
    )
    assert list(found["outputs"]) == ["probabilities"]


def test_rest_client_errors_name_their_cause(kserve_python, grpc_token_server, served):
    frame = served.clf_frame.head(2)
    url = f"http://127.0.0.1:{grpc_token_server.port}"
    args = dict(url=url, columns=columns(frame), strings=["city"])
    denied = kserve_sdk.run(kserve_python, "rest_infer", model=MODEL, **args)
    assert denied["error"]["status"] == 401
    unknown = kserve_sdk.run(
        kserve_python, "rest_infer", model="nope", token=grpc_token_server.token, **args
    )
    assert unknown["error"]["status"] == 404 and "nope" in unknown["error"]["message"]
    # A missing input: 422 naming it (docs/serving.md, the error table).
    missing = dict(args, columns={k: v for k, v in args["columns"].items() if k != "city"})
    refused = kserve_sdk.run(
        kserve_python, "rest_infer", model=MODEL, token=grpc_token_server.token, **missing
    )
    assert refused["error"]["status"] == 422 and "city" in refused["error"]["message"]
    ok = kserve_sdk.run(
        kserve_python, "rest_infer", model=MODEL, token=grpc_token_server.token, **args
    )
    assert ok["outputs"]["label"]["shape"] == [2]
    assert grpc_token_server.alive()


# =================================================================================== gRPC
def test_grpc_client_health_probes(kserve_python, grpc_server):
    found = kserve_sdk.run(
        kserve_python, "grpc_health", target=f"127.0.0.1:{grpc_server.grpc_port}", model=MODEL
    )
    assert found["live"] is True and found["ready"] is True and found["model_ready"] is True
    assert found["other_ready"] is False


@pytest.mark.parametrize("binary", [True, False], ids=["raw-contents", "typed-contents"])
def test_grpc_client_infers_like_v2_and_the_source(kserve_python, grpc_server, served, kit, binary):
    frame = served.clf_frame.head(40)
    found = kserve_sdk.run(
        kserve_python,
        "grpc_infer",
        target=f"127.0.0.1:{grpc_server.grpc_port}",
        model=MODEL,
        columns=columns(frame),
        strings=["city"],
        binary=binary,
        request_id="g-1",
        calls=8,
    )
    assert found["id"] == "g-1" and found["model"] == MODEL
    check_like_v2_and_source(found, http_v2(grpc_server, frame, kit), served, frame)
    assert all(answer == found["outputs"] for answer in found["all"])  # 8 concurrent calls


def test_grpc_client_token_and_errors(kserve_python, grpc_token_server, served):
    frame = served.clf_frame.head(2)
    args = dict(
        target=f"127.0.0.1:{grpc_token_server.grpc_port}", columns=columns(frame), strings=["city"]
    )
    denied = kserve_sdk.run(kserve_python, "grpc_infer", model=MODEL, **args)
    assert denied["error"]["status"] == "UNAUTHENTICATED"
    assert "authorization: Bearer" in denied["error"]["message"]
    unknown = kserve_sdk.run(
        kserve_python, "grpc_infer", model="nope", token=grpc_token_server.token, **args
    )
    assert unknown["error"]["status"] == "NOT_FOUND" and "nope" in unknown["error"]["message"]
    ok = kserve_sdk.run(
        kserve_python, "grpc_infer", model=MODEL, token=grpc_token_server.token, **args
    )
    assert ok["outputs"]["probabilities"]["shape"][0] == 2
    assert grpc_token_server.alive()
