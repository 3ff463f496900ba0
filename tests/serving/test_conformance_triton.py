"""Conformance with Triton's HTTP front end and KServe's V2 REST spec, against a real server.

A ported subset of Triton's ``qa/L0_http`` cases (triton-inference-server/server): each test
names the upstream case it follows. The models differ (ours are the conftest bundles), the
behaviour checked is the protocol's: raw binary requests, compression, error statuses, chunking.
"""

from __future__ import annotations

import gzip
import socket
import zlib

import numpy as np
import pytest

CLF = "churn-onnx"
REG = "reg"
MAX_BODY = 65536


@pytest.fixture(scope="module")
def clf_server(served, start_server):
    return start_server(served.clf_bundle, "--max-body-bytes", str(MAX_BODY), label="t-clf")


@pytest.fixture(scope="module")
def reg_server(served, start_server):
    return start_server(served.reg_bundle, "--max-body-bytes", str(MAX_BODY), label="t-reg")


def _reg_input(reg_server):
    meta = reg_server.get(f"/v2/models/{REG}").json()
    (inp,) = meta["inputs"]
    return inp, {"FP32": np.float32, "FP64": np.float64}[inp["datatype"]]


def _split(reply):
    size = int(reply.headers["inference-header-content-length"])
    import json

    return json.loads(reply.body[:size]), reply.body[size:]


# ====================================================================== raw binary requests
@pytest.mark.parametrize("rows", [1, 7])  # test_raw_binary, test_raw_binary_longer
def test_raw_binary(reg_server, served, rows):
    inp, dtype = _reg_input(reg_server)
    x = served.reg_frame.head(rows).to_numpy().astype(dtype)
    reply = reg_server.post(
        f"/v2/models/{REG}/infer",
        x.tobytes(),
        {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert reply.status == 200, reply.text
    header, data = _split(reply)
    (out,) = header["outputs"]
    assert out["parameters"]["binary_data_size"] == len(data)
    got = np.frombuffer(data, dtype={"FP32": np.float32, "FP64": np.float64}[out["datatype"]])
    np.testing.assert_allclose(got, served.reg.predict(served.reg_frame.head(rows)), rtol=1e-4)


def test_content_encoding_chunked_manually(reg_server, served):
    # test_content_encoding_chunked_manually: a raw binary body sent as one hand-made chunk
    _, dtype = _reg_input(reg_server)
    x = served.reg_frame.head(2).to_numpy().astype(dtype).tobytes()
    chunked = f"{len(x):X}\r\n".encode() + x + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", reg_server.port), timeout=10) as s:
        s.sendall(
            f"POST /v2/models/{REG}/infer HTTP/1.1\r\nHost: x\r\n"
            "Inference-Header-Content-Length: 0\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n".encode()
            + chunked
        )
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 "), response[:300]


def test_multi_inputs(clf_server):
    # test_multi_inputs: a raw request to a model of several inputs is 400
    reply = clf_server.post(
        f"/v2/models/{CLF}/infer",
        np.arange(8, dtype=np.float64).tobytes(),
        {"Inference-Header-Content-Length": "0"},
    )
    assert reply.status == 400, reply.text
    assert "Raw request must only have 1 input" in reply.json()["error"]


def test_raw_binary_size_not_whole_rows(reg_server):
    # a size that is no whole number of rows cannot be deduced: 400 (as test_multi_inputs)
    reply = reg_server.post(
        f"/v2/models/{REG}/infer", b"\0" * 7, {"Inference-Header-Content-Length": "0"}
    )
    assert reply.status == 400, reply.text


def test_chunked_infer_at_max_chunks(clf_server):
    # test_chunked_infer_at_max_chunks (http_request_many_chunks.py): many one-byte chunks of a
    # raw request reach the decoder, which refuses it as a raw request for a multi-input model
    with socket.create_connection(("127.0.0.1", clf_server.port), timeout=20) as s:
        s.sendall(
            f"POST /v2/models/{CLF}/infer HTTP/1.1\r\nHost: x\r\n"
            "Inference-Header-Content-Length: 0\r\nContent-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        s.sendall(b"1\r\nA\r\n" * 4096 + b"0\r\n\r\n")
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 400 "), response[:300]
    assert b"Raw request must only have 1 input" in response


# ====================================================================== errors
def test_duplicate_output_names(clf_server, kit):
    # test_duplicate_output_names: the same output requested twice is 400, the server stays live
    body = kit.v2_columns_body(kit.churn_frame(2, seed=1))
    body["outputs"] = [{"name": "label"}, {"name": "label"}]
    reply = clf_server.post(f"/v2/models/{CLF}/infer", body)
    assert reply.status == 400, reply.text
    assert "output 'label' already exists in request" in reply.json()["error"]
    assert clf_server.get("/v2/health/live").status == 200


def test_inference_header_content_length_out_of_range(clf_server):
    # test_inference_header_content_length_out_of_range
    reply = clf_server.post(
        f"/v2/models/{CLF}/infer",
        {"inputs": []},
        {"Inference-Header-Content-Length": "99999999999"},
    )
    assert reply.status == 400, reply.text
    assert clf_server.get("/v2/health/live").status == 200


def test_json_recursion_depth_limit(clf_server):
    # test_json_recursion_depth_limit: deeply nested data is refused, not a crash
    data = "1.0"
    for _ in range(600):
        data = f"[{data}]"
    body = (
        '{"inputs":[{"name":"age","datatype":"FP64","shape":[1],"data":' + data + "}]}"
    ).encode()
    reply = clf_server.post(f"/v2/models/{CLF}/infer", body)
    assert 400 <= reply.status < 500 and "error" in reply.json()
    assert clf_server.get("/v2/health/live").status == 200


# ====================================================================== compression
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_request_compression_tritonclient(clf_server, served, kit, algorithm):
    # tritonclient's request_compression_algorithm (L0_http test.sh: compressed inputs)
    import tritonclient.http as httpclient

    frame = kit.churn_frame(5, seed=3)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{clf_server.port}")
    inputs = []
    for c in frame.columns:
        arr = frame[c].to_numpy()
        arr = arr.astype(object) if c == "city" else arr.astype(np.float64)
        inp = httpclient.InferInput(c, [len(frame)], "BYTES" if c == "city" else "FP64")
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer(CLF, inputs, request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(
        result.as_numpy("label"), np.asarray(served.onnx_pyfunc.predict(frame))
    )
    client.close()


def test_compressed_body_over_limit_is_413(clf_server):
    # test_default_limit_compressed (http_input_size_limit_test.py): the decompressed size counts
    bomb = gzip.compress(b" " * (MAX_BODY * 4))
    assert len(bomb) < MAX_BODY
    reply = clf_server.post(f"/v2/models/{CLF}/infer", bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413, reply.text
    assert clf_server.get("/v2/health/live").status == 200


@pytest.mark.parametrize(
    "coding, body, status",
    [
        ("br", b"x", 415),
        ("compress", b"x", 415),
        ("gzip", b"not gzip at all", 400),
        ("gzip", gzip.compress(b"{}")[:-6], 400),  # truncated
        ("deflate", b"\x00\x01garbage", 400),
    ],
)
def test_bad_content_encoding(clf_server, coding, body, status):
    # test_no_leak_on_invalid_inference_header_length's neighbours: malformed compressed bodies
    reply = clf_server.post(f"/v2/models/{CLF}/infer", body, {"Content-Encoding": coding})
    assert reply.status == status, reply.text
    assert reply.json()["field"] == "Content-Encoding"
    if status == 415:
        assert "gzip" in reply.headers["accept-encoding"]


def test_deflate_raw_and_zlib_and_invocations(clf_server, served, kit):
    import json

    frame = kit.churn_frame(3, seed=4)
    doc = json.dumps({"dataframe_split": frame.to_dict("split")}).encode()
    expected = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    raw = zlib.compressobj(wbits=-15)
    for body in (zlib.compress(doc), raw.compress(doc) + raw.flush(), gzip.compress(doc)):
        coding = "gzip" if body[:2] == b"\x1f\x8b" else "deflate"
        reply = clf_server.post("/invocations", body, {"Content-Encoding": coding})
        assert reply.status == 200, reply.text
        assert reply.json()["predictions"] == expected


# ====================================================================== KServe SDK-style probes
def test_kserve_health_bodies(clf_server):
    # KServe V2 REST: $live_server_response, $ready_server_response, $ready_model_response
    assert clf_server.get("/v2/health/live").json() == {"live": True}
    assert clf_server.get("/v2/health/ready").json() == {"ready": True}
    assert clf_server.get(f"/v2/models/{CLF}/ready").json() == {"name": CLF, "ready": True}
    assert clf_server.get("/v2/models/nope/ready").status == 404  # no auth: names are public
