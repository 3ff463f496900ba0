"""V2 values and framing as Triton (and the HTTP RFCs) read them, against a real server: found by
trying the runtime as Triton's tests and a hostile client would (2026-12-04).

Each case says what the peer does with the same input: a JSON boolean among numbers (Triton:
400), a text with a NUL (the source: an unknown category), an output's shared memory region, an
empty ``outputs`` list with ``binary_data_output``, the binary header's digits, a chunked body's
trailer fields, an unknown transfer coding, numpy's overflow warnings in the JSON log.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

CLF = "churn-onnx"
REG = "reg"


@pytest.fixture(scope="module")
def clf_server(served, start_server):
    return start_server(served.clf_bundle, label="v2-values-clf")


@pytest.fixture(scope="module")
def reg_server(served, start_server):
    return start_server(served.reg_bundle, label="v2-values-reg")


def _tensor_body(reg_server, rows) -> dict:
    (inp,) = reg_server.get(f"/v2/models/{REG}").json()["inputs"]
    return {
        "inputs": [{"name": inp["name"], "datatype": "FP64", "shape": [len(rows), 5], "data": rows}]
    }


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    return response


# ====================================================================== JSON booleans
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_among_numbers_is_refused_not_read_as_one(reg_server, served, value):
    # Triton's JSON reader wants a number for FP64 (400); numpy would read true as 1.0
    rows = served.reg_frame.head(2).to_numpy().tolist()
    rows[1][0] = value
    reply = reg_server.post(f"/v2/models/{REG}/infer", _tensor_body(reg_server, rows))
    assert reply.status == 422, reply.text
    assert "must be numbers" in reply.json()["error"] and str(value).lower() in reply.text
    # a request whose body has "true" elsewhere (a parameter) and only numbers is answered
    body = _tensor_body(reg_server, served.reg_frame.head(2).to_numpy().tolist())
    body["parameters"] = {"binary_data_output": False, "note": "true"}
    assert reg_server.post(f"/v2/models/{REG}/infer", body).status == 200


def test_a_boolean_in_a_column_input_is_refused(clf_server, kit):
    body = kit.v2_columns_body(kit.churn_frame(2, seed=3))
    body["inputs"][0]["data"][1] = True  # age
    reply = clf_server.post(f"/v2/models/{CLF}/infer", body)
    assert reply.status == 422, reply.text
    assert reply.json()["field"] == "age"


# ====================================================================== texts with NUL
def test_a_text_with_a_nul_is_scored_as_the_source_scores_it(clf_server, served, kit):
    frame = kit.churn_frame(3, seed=5)
    frame["city"] = ["lyon\x00", "pa\x00ris", "lyon"]
    expected = served.clf.predict_proba(frame)[:, 1]
    # the source reads "lyon\x00" as an unknown city, not as lyon
    assert not np.isclose(expected[0], expected[2])
    body = kit.v2_columns_body(frame)
    body["outputs"] = [{"name": "probabilities"}]
    reply = clf_server.post(f"/v2/models/{CLF}/infer", body)
    assert reply.status == 200, reply.text
    (out,) = reply.json()["outputs"]
    got = np.asarray(out["data"]).reshape(out["shape"])[:, 1]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    split = {"dataframe_split": frame.to_dict("split")}
    split["dataframe_split"].pop("index")
    reply = clf_server.post("/invocations", split)
    assert reply.status == 200, reply.text
    labels = served.clf.predict(frame).tolist()
    assert reply.json()["predictions"] == labels


# ====================================================================== outputs
def test_an_output_in_shared_memory_is_refused(clf_server, kit):
    # Triton would write the output into the region and leave it out of the body
    body = kit.v2_columns_body(kit.churn_frame(1, seed=2))
    body["outputs"] = [
        {
            "name": "label",
            "parameters": {"shared_memory_region": "out0", "shared_memory_byte_size": 8},
        }
    ]
    reply = clf_server.post(f"/v2/models/{CLF}/infer", body)
    assert reply.status == 400, reply.text
    assert reply.json()["field"] == "label" and "shared-memory" in reply.json()["error"]


def test_empty_outputs_list_keeps_binary_data_output(clf_server, kit):
    # binary_data extension: binary_data_output applies to all outputs unless one overrides it
    body = kit.v2_columns_body(kit.churn_frame(2, seed=2))
    body["outputs"] = []
    body["parameters"] = {"binary_data_output": True}
    reply = clf_server.post(f"/v2/models/{CLF}/infer", json.dumps(body).encode())
    assert reply.status == 200, reply.text
    size = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.body[:size])
    assert {o["name"] for o in header["outputs"]} == {"label", "probabilities"}
    assert all("binary_data_size" in o["parameters"] for o in header["outputs"])


# ====================================================================== framing
@pytest.mark.parametrize("value", ["+10", "1_0", "0x10", "10.0"])
def test_binary_header_length_is_digits_only(reg_server, value):
    reply = reg_server.post(
        f"/v2/models/{REG}/infer",
        b'{"inputs": []}' + b"\0" * 16,
        {"Inference-Header-Content-Length": value},
    )
    assert reply.status == 400, reply.text
    assert reply.json()["field"] == "Inference-Header-Content-Length"


def test_trailer_fields_do_not_change_the_request(reg_server, served):
    # RFC 9110 6.5.1: trailer fields are not merged into the header section; a trailer
    # Inference-Header-Content-Length (or Content-Encoding) must not change how the body is read
    body = json.dumps(_tensor_body(reg_server, served.reg_frame.head(1).to_numpy().tolist()))
    chunk = f"{len(body):X}\r\n{body}\r\n".encode()
    for trailer in (b"Inference-Header-Content-Length: 3", b"Content-Encoding: gzip"):
        response = _raw(
            reg_server.port,
            f"POST /v2/models/{REG}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
            + chunk
            + b"0\r\n"
            + trailer
            + b"\r\nX-Request-Id: from-trailer\r\n\r\n",
        )
        assert response.startswith(b"HTTP/1.1 200 "), response[:300]
        assert b"from-trailer" not in response


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked"])
def test_an_unknown_transfer_coding_is_501(reg_server, coding):
    # RFC 9112 6.1: a transfer coding the server does not implement gets 501 (it was served as
    # if only chunked, the gzip coding ignored)
    response = _raw(
        reg_server.port,
        f"POST /v2/models/{REG}/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n"
        "\r\n2\r\n{}\r\n0\r\n\r\n".encode(),
    )
    assert response.startswith(b"HTTP/1.1 501 "), response[:300]
    assert b"Transfer-Encoding" in response
    assert reg_server.get("/v2/health/live").status == 200


# ====================================================================== the log stays JSON Lines
def test_overflow_is_refused_without_a_bare_warning_line(reg_server, served):
    (inp,) = reg_server.get(f"/v2/models/{REG}").json()["inputs"]
    rows = served.reg_frame.head(1).to_numpy().tolist()
    rows[0][0] = 1e39  # beyond float32: refused by name, numpy's overflow is no warning line
    reply = reg_server.post(f"/v2/models/{REG}/infer", _tensor_body(reg_server, rows))
    if inp["datatype"] == "FP32":
        assert reply.status == 422, reply.text
    reply = reg_server.post("/invocations", {"dataframe_split": {"data": rows}})
    assert reply.status in (200, 422), reply.text
    lines = [line for line in reg_server.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
