"""Every route of the serving runtime over real sockets, against a real server process.

Predictions are compared with ``mlflow.pyfunc.load_model(...)``'s on the same rows; the error
corpus goes through HTTP (status, field, no traceback, the server still answers); MLflow's own
scoring client and tritonclient talk to the server unchanged; concurrent clients each get exactly
their own rows back while the server batches.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlflow_deploy_plugins import __version__

CLF = "churn-onnx"
INFER = f"/v2/models/{CLF}/infer"
INFER_V1 = f"/v2/models/{CLF}/versions/1/infer"
MAX_BODY = 65536
JSON_CT = {"Content-Type": "application/json"}
HOSTILE = Path(__file__).parent / "testdata" / "hostile"


# ====================================================================== fixtures
@pytest.fixture(scope="module")
def clf_server(served, start_server):
    return start_server(
        served.clf_bundle,
        "--max-batch-size",
        "16",
        "--max-body-bytes",
        str(MAX_BODY),
        label="clf",
    )


@pytest.fixture(scope="module")
def reg_server(served, start_server):
    return start_server(served.reg_bundle, label="reg")


@pytest.fixture(scope="module")
def converted_server(served, start_server):
    return start_server(served.converted_bundle, label="converted")


@pytest.fixture(scope="module")
def rows(kit):
    """Rows the model never saw (cities include one it never saw either)."""
    frame = kit.churn_frame(12, seed=42)
    frame.loc[3, "city"] = "marseille"
    return frame


def expected(served, frame):
    labels = served.onnx_pyfunc.predict(frame)
    proba = served.onnx_pyfunc.predict(frame, params={"predict_method": "predict_proba"})
    return np.asarray(labels), np.asarray(proba)


def v2_columns(frame, shape_1d: bool = True) -> dict:
    """One V2 input per table column (tenure as INT64: any numeric datatype converts)."""
    n = len(frame)
    inputs = []
    for column in frame.columns:
        values = frame[column].tolist()
        if column == "city":
            datatype = "BYTES"
        elif column == "tenure":
            datatype, values = "INT64", [int(v) for v in values]
        else:
            datatype = "FP64"
        inputs.append(
            {
                "name": column,
                "datatype": datatype,
                "shape": [n] if shape_1d else [n, 1],
                "data": values,
            }
        )
    return {"inputs": inputs}


def v2_tensors(frame) -> dict:
    """The ONNX graph's own inputs: [N, 1] per column, the graph's datatypes, nested rows."""
    return {
        "inputs": [
            {
                "name": c,
                "datatype": "BYTES" if c == "city" else "FP64",
                "shape": [len(frame), 1],
                "data": [[v] for v in frame[c].tolist()],
            }
            for c in frame.columns
        ]
    }


def v2_outputs(reply) -> dict:
    assert reply.status == 200, reply.text
    doc = reply.json()
    out = {}
    for o in doc["outputs"]:
        dtype = {"INT64": np.int64, "FP32": np.float32, "FP64": np.float64}[o["datatype"]]
        out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family's samples in Prometheus text."""
    found = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{.*\}})?\s+(\S+)$", line)
        if m:
            found[m.group(1) or ""] = float(m.group(2))
    return found


# ====================================================================== metadata and health
def test_server_metadata_and_health(clf_server):
    meta = clf_server.get("/v2")
    assert meta.status == 200
    assert meta.json()["name"] and "binary_tensor_data" in meta.json()["extensions"]
    for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/health"):
        assert clf_server.get(path).status == 200, path
        assert clf_server.request("HEAD", path).status == 200, path
    # KServe V2 REST: $live_server_response, $ready_server_response, $ready_model_response
    assert clf_server.get("/v2/health/live").json() == {"live": True}
    assert clf_server.get("/v2/health/ready").json() == {"ready": True}
    for path in (f"/v2/models/{CLF}/ready", f"/v2/models/{CLF}/versions/1/ready"):
        reply = clf_server.get(path)
        assert reply.status == 200, path
        assert reply.json() == {"name": CLF, "ready": True}
    # MLflow's /ping and /health keep `mlflow models serve`'s body
    assert clf_server.get("/ping").body == b"\n" and clf_server.get("/health").body == b"\n"


def test_model_metadata(clf_server, served, kit):
    for path in (f"/v2/models/{CLF}", f"/v2/models/{CLF}/versions/1"):
        reply = clf_server.get(path)
        assert reply.status == 200, reply.text
        meta = reply.json()
        assert meta["name"] == CLF and meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
        assert inputs == {
            "age": ("FP64", [-1, 1]),
            "income": ("FP64", [-1, 1]),
            "tenure": ("FP64", [-1, 1]),
            "city": ("BYTES", [-1, 1]),
        }
        outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
        assert outputs == {"label": ("INT64", [-1]), "probabilities": ("FP32", [-1, 2])}
        assert meta["parameters"]["columns"] == kit.CLF_COLUMNS
        assert meta["parameters"]["task"] == "classification"


def test_version(clf_server):
    # `mlflow models serve` answers /version with the version as text, and MLflow's
    # ScoringServerClient.get_version() returns the body's text
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from mlflow_deploy_plugins import __version__

    reply = clf_server.get("/version")
    assert reply.status == 200
    assert reply.text == __version__
    assert ScoringServerClient("127.0.0.1", clf_server.port).get_version() == __version__


def test_version_reports_the_registry_lineage(clf_server, served):
    # issue 12: the registry version, its run and the source it came from, from the manifest
    from mlflow.tracking import MlflowClient

    from mlflow_deploy_plugins.core.manifest import Manifest

    manifest = Manifest.read(served.clf_bundle)
    twin = MlflowClient(served.tracking_uri).get_model_version("churn-onnx", "1")
    headers = clf_server.get("/version").headers
    assert headers["x-model-registered-name"] == "churn-onnx"
    assert headers["x-model-registered-version"] == "1"
    assert headers["x-model-run-id"] == twin.run_id
    assert headers["x-model-source-name"] == "churn"
    assert headers["x-model-source-version"] == "1"
    assert headers["x-model-source-run-id"] == manifest.source["run_id"]
    assert headers["x-model-sha256"] == manifest.sha256


def test_metrics_exposition(clf_server, rows):
    assert clf_server.post("/invocations", {"dataframe_records": rows.head(2).to_dict("records")})
    assert clf_server.post(INFER, b"{").status == 400
    reply = clf_server.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = reply.text
    requests = metric_values(text, "mlflow_deploy_requests_total")
    assert requests['{route="/invocations",status="200"}'] >= 1
    assert requests['{route="/v2/models/{name}/infer",status="400"}'] >= 1
    for family in (
        "mlflow_deploy_request_duration_seconds_bucket",
        "mlflow_deploy_batch_size_bucket",
        "mlflow_deploy_inflight_requests",
        "mlflow_deploy_payload_log_records_written_total",
        "mlflow_deploy_payload_log_records_dropped_total",
    ):
        assert metric_values(text, family), family
    assert metric_values(text, "mlflow_deploy_model_info") == {f'{{name="{CLF}",version="1"}}': 1.0}


# ====================================================================== V2 inference
@pytest.mark.parametrize("path", [INFER, INFER_V1])
@pytest.mark.parametrize("form", ["columns-1d", "columns-2d", "graph-tensors"])
def test_v2_infer_matches_pyfunc(clf_server, served, rows, path, form):
    body = v2_tensors(rows) if form == "graph-tensors" else v2_columns(rows, form == "columns-1d")
    body["id"] = "req-7"
    reply = clf_server.post(path, body)
    out = v2_outputs(reply)
    labels, proba = expected(served, rows)
    assert reply.json()["model_name"] == CLF and reply.json()["model_version"] == "1"
    assert reply.json()["id"] == "req-7"
    np.testing.assert_array_equal(out["label"], labels.astype(np.int64))
    np.testing.assert_array_equal(out["probabilities"], proba)
    # the sklearn source agrees on the labels (the parity gate's promise)
    np.testing.assert_array_equal(out["label"].astype(bool), served.clf.predict(rows))


def test_v2_requested_outputs(clf_server, served, rows):
    body = v2_columns(rows) | {"outputs": [{"name": "probabilities"}]}
    out = v2_outputs(clf_server.post(INFER, body))
    assert list(out) == ["probabilities"]
    np.testing.assert_array_equal(out["probabilities"], expected(served, rows)[1])


def test_v2_more_rows_than_max_batch_size(clf_server, served, kit):
    frame = kit.churn_frame(40, seed=7)
    out = v2_outputs(clf_server.post(INFER, v2_columns(frame)))
    np.testing.assert_array_equal(out["probabilities"], expected(served, frame)[1])


def test_v2_regressor_graph_tensor_and_columns(reg_server, served, kit):
    frame = served.reg_frame.head(9)
    n = len(frame)
    graph = {
        "inputs": [
            {"name": "X", "datatype": "FP64", "shape": [n, 5], "data": frame.to_numpy().tolist()}
        ]
    }
    columns = {
        "inputs": [
            {"name": c, "datatype": "FP64", "shape": [n], "data": frame[c].tolist()}
            for c in kit.REG_COLUMNS
        ]
    }
    meta = reg_server.get("/v2/models/reg").json()
    assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [("X", [-1, 5])]
    reply = reg_server.post("/v2/models/reg/infer", graph)
    a = v2_outputs(reply)
    # outputs are shaped as the metadata declares them ([-1]: one value per row)
    assert [o["shape"] for o in meta["outputs"]] == [[-1]]
    assert [o["shape"] for o in reply.json()["outputs"]] == [[n]]
    b = v2_outputs(reg_server.post("/v2/models/reg/versions/1/infer", columns))
    assert list(a) == ["variable"]
    np.testing.assert_array_equal(a["variable"], b["variable"])
    np.testing.assert_allclose(a["variable"], served.reg.predict(frame), rtol=1e-4, atol=1e-4)
    flat = graph["inputs"][0] | {"data": frame.to_numpy().reshape(-1).tolist()}
    c = v2_outputs(reg_server.post("/v2/models/reg/infer", {"inputs": [flat]}))
    np.testing.assert_array_equal(a["variable"], c["variable"])
    split = {"dataframe_split": frame.to_dict("split")}
    reply = reg_server.post("/invocations", split)
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], a["variable"], rtol=1e-6)


# ====================================================================== MLflow scoring
def test_invocations_every_format(clf_server, served, rows):
    labels, proba = expected(served, rows)
    split = rows.to_dict("split")
    del split["index"]
    bodies = {
        "dataframe_split": ({"dataframe_split": split}, JSON_CT),
        "dataframe_split+index": ({"dataframe_split": rows.to_dict("split")}, JSON_CT),
        "dataframe_records": ({"dataframe_records": rows.to_dict("records")}, JSON_CT),
        "instances": ({"instances": rows.to_dict("records")}, JSON_CT),
        "inputs-records": ({"inputs": rows.to_dict("records")}, JSON_CT),
        "inputs-columns": ({"inputs": rows.to_dict("list")}, JSON_CT),
        "csv": (rows.to_csv(index=False), {"Content-Type": "text/csv"}),
        "csv-charset": (rows.to_csv(index=False), {"Content-Type": "text/csv; charset=utf-8"}),
    }
    for name, (body, headers) in bodies.items():
        reply = clf_server.post("/invocations", body, headers)
        assert reply.status == 200, (name, reply.text)
        assert reply.json() == {"predictions": labels.tolist()}, name
        if isinstance(body, dict):
            body = body | {"params": {"predict_method": "predict_proba"}}
            reply = clf_server.post("/invocations", body, headers)
            assert reply.status == 200, (name, reply.text)
            got = np.asarray(reply.json()["predictions"], dtype=np.float32)
            np.testing.assert_array_equal(got, proba, err_msg=name)
    # Rows of bare values for a source whose signature names its columns: MLflow's scoring
    # server refuses them ("Model is missing inputs"); by position they would score a client's
    # reordered columns as other inputs.
    for key in ("instances", "inputs"):
        for body in ({key: rows.to_numpy().tolist()}, {key: rows.to_numpy().tolist()[0]}):
            reply = clf_server.post("/invocations", body, JSON_CT)
            assert reply.status == 422, (key, reply.text)
            assert reply.json()["message"].startswith("Model is missing inputs ['age'")


def test_invocations_converted_bundle_matches_source(converted_server, served, rows):
    meta = converted_server.get("/v2/models/churn")
    assert meta.status == 200 and meta.json()["versions"] == ["1"]
    body = {"dataframe_split": rows.to_dict("split")}
    reply = converted_server.post("/invocations", body)
    assert reply.status == 200, reply.text
    assert reply.json()["predictions"] == np.asarray(served.source_pyfunc.predict(rows)).tolist()
    body["params"] = {"predict_method": "predict_proba"}
    proba = converted_server.post("/invocations", body).json()["predictions"]
    np.testing.assert_allclose(proba, served.clf.predict_proba(rows), atol=1e-5)


def test_mlflow_scoring_client(clf_server, served, rows, kit):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    client = ScoringServerClient(kit.HOST, clf_server.port)
    client.wait_server_ready(timeout=10)
    assert client.get_version() == __version__  # the text, as `mlflow models serve` answers
    labels, proba = expected(served, rows)
    got = client.invoke(rows).get_predictions()
    np.testing.assert_array_equal(got.to_numpy().reshape(-1), labels)
    got = client.invoke(rows, params={"predict_method": "predict_proba"}).get_predictions()
    np.testing.assert_array_equal(got.to_numpy().astype(np.float32), proba)


# ====================================================================== tritonclient
def test_tritonclient_round_trip(clf_server, served, rows, kit):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"{kit.HOST}:{clf_server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(CLF) and client.is_model_ready(CLF, "1")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata(CLF)
        assert [i["name"] for i in meta["inputs"]] == ["age", "income", "tenure", "city"]
        labels, proba = expected(served, rows)
        n = len(rows)
        for binary in (True, False):
            inputs = []
            for column in rows.columns:
                values = rows[[column]].to_numpy()
                if column == "city":
                    tensor = triton.InferInput(column, [n, 1], "BYTES")
                    values = values.astype(object)
                else:
                    tensor = triton.InferInput(column, [n, 1], "FP64")
                    values = values.astype(np.float64)
                tensor.set_data_from_numpy(values, binary_data=binary)
                inputs.append(tensor)
            outputs = [
                triton.InferRequestedOutput("label", binary_data=binary),
                triton.InferRequestedOutput("probabilities", binary_data=binary),
            ]
            for version in ("", "1"):
                result = client.infer(
                    CLF, inputs, model_version=version, outputs=outputs, request_id="t-1"
                )
                np.testing.assert_array_equal(result.as_numpy("label"), labels.astype(np.int64))
                np.testing.assert_array_equal(result.as_numpy("probabilities"), proba)
                assert result.get_response()["id"] == "t-1"
            # no outputs requested: all of them, binary as the request parameter asks
            result = client.infer(CLF, inputs)
            np.testing.assert_array_equal(result.as_numpy("probabilities"), proba)
    finally:
        client.close()


# ====================================================================== error corpus
def _v2(frame, **changes) -> dict:
    """V2 per-column body for ``frame`` with inputs replaced (value dict) or dropped (None)."""
    body = v2_columns(frame)
    by_name = {i["name"]: i for i in body["inputs"]}
    for name, new in changes.items():
        if new is None:
            by_name.pop(name)
        else:
            by_name[name] = {"name": name} | new
    return {"inputs": list(by_name.values())}


def _records(frame, **changes) -> dict:
    records = frame.to_dict("records")
    for name, value in changes.items():
        for r in records:
            if value is None:
                r.pop(name)
            else:
                r[name] = value
    return {"dataframe_records": records}


def _j(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _corpus(frame):
    """(id, method, path, body, headers, status, field, words in the message)."""
    one = frame.head(2)
    csv = one.to_csv(index=False)
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    nested = json.loads("[" * 200 + "1" + "]" * 200)
    deep_data = {"datatype": "FP64", "shape": [2], "data": [nested, nested]}
    post = "POST"
    return [
        # --- V2
        (
            "v2-truncated-json",
            post,
            INFER,
            b'{"inputs": [{"name": "age", "shape": [1',
            None,
            400,
            None,
            "JSON",
        ),
        ("v2-not-json", post, INFER, b"hello", None, 400, None, "JSON"),
        ("v2-empty-body", post, INFER, b"", None, 400, None, "empty"),
        ("v2-not-an-object", post, INFER, b"[1, 2]", None, 400, None, "inputs"),
        ("v2-no-inputs", post, INFER, b'{"inputs": []}', None, 400, "inputs", "inputs"),
        ("v2-missing-column", post, INFER, _j(_v2(one, city=None)), None, 422, "city", "city"),
        (
            "v2-unknown-input",
            post,
            INFER,
            _j(_v2(one, bogus={"datatype": "FP64", "shape": [2], "data": [1, 2]})),
            None,
            422,
            "bogus",
            "bogus",
        ),
        (
            "v2-unicode-unknown-input",
            post,
            INFER,
            _j(_v2(one, age=None, **{"âge": {"datatype": "FP64", "shape": [2], "data": [1, 2]}})),
            None,
            422,
            "âge",
            "âge",
        ),
        (
            "v2-string-in-numeric",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP64", "shape": [2], "data": ["forty", 1]})),
            None,
            422,
            "age",
            "age",
        ),
        (
            "v2-bytes-for-numeric",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "BYTES", "shape": [2], "data": ["a", "b"]})),
            None,
            422,
            "age",
            "FP64",
        ),
        (
            "v2-number-for-city",
            post,
            INFER,
            _j(_v2(one, city={"datatype": "FP64", "shape": [2], "data": [1, 2]})),
            None,
            422,
            "city",
            "BYTES",
        ),
        (
            "v2-unknown-datatype",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP99", "shape": [2], "data": [1, 2]})),
            None,
            400,
            "age",
            "FP99",
        ),
        (
            "v2-nan",
            post,
            INFER,
            _j(_v2(one)).replace(b'"data": [', b'"data": [NaN, ', 1),
            None,
            400,
            None,
            "NaN",
        ),
        (
            "v2-infinity",
            post,
            INFER,
            _j(_v2(one)).replace(b'"data": [', b'"data": [Infinity, ', 1),
            None,
            400,
            None,
            "Infinity",
        ),
        (
            "v2-empty-batch",
            post,
            INFER,
            _j(
                {
                    "inputs": [
                        {
                            "name": c,
                            "datatype": "BYTES" if c == "city" else "FP64",
                            "shape": [0],
                            "data": [],
                        }
                        for c in one.columns
                    ]
                }
            ),
            None,
            422,
            None,
            "no rows",
        ),
        (
            "v2-huge-shape",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP64", "shape": [2**40, 1], "data": [1, 2]})),
            None,
            413,
            "age",
            "elements",
        ),
        (
            "v2-huge-rank",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP64", "shape": [1] * 40, "data": [1]})),
            None,
            400,
            "age",
            "shape",
        ),
        (
            "v2-negative-dim",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP64", "shape": [-2], "data": [1, 2]})),
            None,
            400,
            "age",
            "shape",
        ),
        (
            "v2-shape-vs-data",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP64", "shape": [2], "data": [1, 2, 3]})),
            None,
            422,
            "age",
            "age",
        ),
        (
            "v2-row-counts",
            post,
            INFER,
            _j(_v2(one, age={"datatype": "FP64", "shape": [3], "data": [1, 2, 3]})),
            None,
            422,
            None,
            "rows",
        ),
        ("v2-deep-nesting-json", post, INFER, deep, None, 400, None, "nested"),
        ("v2-deep-nesting-data", post, INFER, _j(_v2(one, age=deep_data)), None, 400, "age", "age"),
        (
            "v2-unknown-output",
            post,
            INFER,
            _j(_v2(one) | {"outputs": [{"name": "nope"}]}),
            None,
            422,
            "nope",
            "nope",
        ),
        (
            "v2-bad-binary-header",
            post,
            INFER,
            _j(_v2(one)),
            {"Inference-Header-Content-Length": "99999"},
            400,
            "Inference-Header-Content-Length",
            "Inference-Header-Content-Length",
        ),
        # --- MLflow scoring
        (
            "mlflow-truncated-json",
            post,
            "/invocations",
            b'{"dataframe_records": [{"age": 1',
            None,
            400,
            None,
            "JSON",
        ),
        (
            "mlflow-missing-column",
            post,
            "/invocations",
            _j(_records(one, city=None)),
            None,
            422,
            "city",
            "city",
        ),
        (
            "mlflow-string-in-numeric",
            post,
            "/invocations",
            _j(_records(one, age="forty")),
            None,
            422,
            "age",
            "age",
        ),
        (
            "mlflow-nan",
            post,
            "/invocations",
            b'{"dataframe_records": [{"age": NaN, "income": 1, "tenure": 1, "city": "lyon"}]}',
            None,
            422,  # MLflow reads the token (Python's json): a missing value, refused by the source
            "age",
            "missing values",
        ),
        (
            "mlflow-infinity",
            post,
            "/invocations",
            b'{"inputs": {"age": [Infinity], "income": [1], "tenure": [1], "city": ["lyon"]}}',
            None,
            422,  # read as MLflow reads it; the source (sklearn) refuses infinite values
            "age",
            "infinite value",
        ),
        (
            "mlflow-empty-records",
            post,
            "/invocations",
            b'{"dataframe_records": []}',
            None,
            422,
            None,
            "no rows",
        ),
        (
            "mlflow-empty-split",
            post,
            "/invocations",
            _j({"dataframe_split": {"columns": list(one.columns), "data": []}}),
            None,
            422,
            None,
            "no rows",
        ),
        (
            "mlflow-no-format",
            post,
            "/invocations",
            b'{"data": [[1, 2, 3, "lyon"]]}',
            None,
            400,
            None,
            "dataframe_split",
        ),
        (
            "mlflow-two-formats",
            post,
            "/invocations",
            _j(_records(one) | {"instances": []}),
            None,
            400,
            None,
            "exactly one",
        ),
        (
            "mlflow-unicode-columns",
            post,
            "/invocations",
            _j(
                {
                    "dataframe_split": {
                        "columns": ["âge", "income", "tenure", "city"],
                        "data": [[1, 2, 3, "lyon"]],
                    }
                }
            ),
            None,
            422,
            "age",
            "âge",
        ),
        (
            "mlflow-deep-nesting",
            post,
            "/invocations",
            b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            None,
            400,
            None,
            "nested",
        ),
        (
            "mlflow-bad-predict-method",
            post,
            "/invocations",
            _j(_records(one) | {"params": {"predict_method": "explode"}}),
            None,
            400,
            "predict_method",
            "predict_method",
        ),
        (
            "mlflow-content-type",
            post,
            "/invocations",
            _j(_records(one)),
            {"Content-Type": "text/plain"},
            415,
            None,
            "Content-Type",
        ),
        (
            "csv-missing-column",
            post,
            "/invocations",
            "age,income,tenure\n1,2,3\n",
            {"Content-Type": "text/csv"},
            422,
            "city",
            "city",
        ),
        (
            "csv-bad-number",
            post,
            "/invocations",
            csv.replace(str(one.age.iloc[0]), "forty", 1),
            {"Content-Type": "text/csv"},
            422,
            "age",
            "age",
        ),
        (
            "csv-not-utf8",
            post,
            "/invocations",
            b"age,income,tenure,city\n1,2,3,\xff\xfe\n",
            {"Content-Type": "text/csv"},
            400,
            None,
            "UTF-8",
        ),
        (
            "csv-header-only",
            post,
            "/invocations",
            "age,income,tenure,city\n",
            {"Content-Type": "text/csv"},
            422,
            None,
            "no rows",
        ),
        # --- routing
        ("unknown-model", post, "/v2/models/nope/infer", _j(_v2(one)), None, 404, "model", "nope"),
        (
            "unknown-version",
            post,
            f"/v2/models/{CLF}/versions/9/infer",
            _j(_v2(one)),
            None,
            404,
            "model",
            "9",
        ),
        ("unknown-model-metadata", "GET", "/v2/models/nope", None, None, 404, "model", "nope"),
        (
            "unknown-version-metadata",
            "GET",
            f"/v2/models/{CLF}/versions/9",
            None,
            None,
            404,
            "model",
            "9",
        ),
        (
            "unknown-version-ready",
            "GET",
            f"/v2/models/{CLF}/versions/9/ready",
            None,
            None,
            404,
            "model",
            "9",
        ),
        ("unknown-route", "GET", "/nope", None, None, 404, "path", "/nope"),
        ("get-infer", "GET", INFER, None, None, 405, None, "POST"),
        ("get-invocations", "GET", "/invocations", None, None, 405, None, "POST"),
        ("post-ready", post, "/v2/health/ready", b"{}", None, 405, None, "GET"),
        ("delete-metadata", "DELETE", f"/v2/models/{CLF}", None, None, 405, None, "GET"),
        ("put-metrics", "PUT", "/metrics", b"x", None, 405, None, "GET"),
    ]


#: Two valid rows the corpus cases are made from (each case breaks one thing).
SAMPLE = pd.DataFrame(
    {
        "age": [30.5, 52.25],
        "income": [20000.0, 41000.5],
        "tenure": [2.0, 11.0],
        "city": ["lyon", "paris"],
    }
)
CORPUS = _corpus(SAMPLE)


def assert_clean_error(reply, status: int, field: str | None, words: str | None) -> dict:
    assert reply.status == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert "Traceback" not in reply.text and 'File "' not in reply.text, reply.text
    doc = reply.json()
    message = doc.get("error") or doc.get("message")
    assert isinstance(message, str) and message, doc
    if field is not None:
        assert doc.get("field") == field, doc
    if words is not None:
        assert words in message, doc
    return doc


@pytest.mark.parametrize(
    "method, path, body, headers, status, field, words",
    [pytest.param(*case[1:], id=case[0]) for case in CORPUS],
)
def test_error_corpus(clf_server, method, path, body, headers, status, field, words):
    reply = clf_server.request(method, path, body, headers)
    doc = assert_clean_error(reply, status, field, words)
    if path == "/invocations":
        assert "error_code" in doc  # MLflow's scoring server error body
    if status == 405:
        assert method not in reply.headers["allow"]
    assert clf_server.get("/v2/health/ready").status == 200
    assert clf_server.post(INFER, v2_columns(SAMPLE)).status == 200


@pytest.mark.parametrize("path", [INFER, "/invocations"])
def test_body_over_max_body_bytes_is_413(clf_server, path):
    body = b'{"inputs": [' + b" " * MAX_BODY + b"]}"
    reply = clf_server.post(path, body)
    assert reply.status == 413, reply.text
    assert "Traceback" not in reply.text and "too large" in reply.json()["error"]
    assert clf_server.get("/v2/health/ready").status == 200


def test_chunked_body_over_max_body_bytes_is_413(clf_server, kit):
    conn = http.client.HTTPConnection(kit.HOST, clf_server.port, timeout=10)
    try:
        chunks = (b" " * 8192 for _ in range(MAX_BODY // 8192 + 2))
        conn.request("POST", INFER, body=chunks, encode_chunked=True, headers=JSON_CT)
        response = conn.getresponse()
        assert response.status == 413
        assert "too large" in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert clf_server.get("/v2/health/ready").status == 200


def test_hostile_files_never_500(clf_server):
    """The codec tests' hostile corpus, sent through HTTP to both routes: 4xx, clean, alive."""
    files = sorted(p for p in HOSTILE.iterdir() if p.is_file())
    assert files
    for path in files:
        content_type = "text/csv" if path.suffix == ".csv" else "application/json"
        for route in (INFER, "/invocations"):
            reply = clf_server.post(route, path.read_bytes(), {"Content-Type": content_type})
            assert 400 <= reply.status < 500, (path.name, route, reply.status, reply.text)
            assert "Traceback" not in reply.text, (path.name, route)
            reply.json()
    assert clf_server.get("/v2/health/ready").status == 200


# ====================================================================== batching under load
THREADS, REQUESTS = 32, 50


def test_concurrent_clients_get_exactly_their_rows(clf_server, served, kit):
    rng = np.random.default_rng(2024)
    sizes = rng.integers(1, 6, size=(THREADS, REQUESTS))
    pool = kit.churn_frame(int(sizes.sum()), seed=99)
    assert not pool.duplicated().any()
    # the single-row pyfunc prediction of every row
    singles = np.concatenate(
        [
            served.onnx_pyfunc.predict(pool.iloc[[i]], params={"predict_method": "predict_proba"})
            for i in range(len(pool))
        ]
    )
    labels = np.asarray(served.onnx_pyfunc.predict(pool))
    plans, start = [], 0
    for t in range(THREADS):
        plan = []
        for r in range(REQUESTS):
            plan.append((start, start + int(sizes[t, r])))
            start += int(sizes[t, r])
        plans.append(plan)

    before = metric_values(clf_server.get("/metrics").text, "mlflow_deploy_batch_size_count")
    barrier = threading.Barrier(THREADS)
    failures: list[str] = []

    def client(t: int) -> None:
        conn = http.client.HTTPConnection(kit.HOST, clf_server.port, timeout=30)
        try:
            barrier.wait()
            for r, (lo, hi) in enumerate(plans[t]):
                frame = pool.iloc[lo:hi]
                if (t + r) % 2:
                    body = {
                        "dataframe_split": frame.to_dict("split"),
                        "params": {"predict_method": "predict_proba"},
                    }
                    reply = kit.request(clf_server.port, "POST", "/invocations", body, conn=conn)
                    if reply.status != 200:
                        failures.append(f"{t}/{r}: {reply.status} {reply.text}")
                        continue
                    got = np.asarray(reply.json()["predictions"], dtype=np.float32)
                    got_labels = None
                else:
                    body = v2_columns(frame) | {"id": f"{t}-{r}"}
                    reply = kit.request(clf_server.port, "POST", INFER, body, conn=conn)
                    if reply.status != 200 or reply.json().get("id") != f"{t}-{r}":
                        failures.append(f"{t}/{r}: {reply.status} {reply.text}")
                        continue
                    out = v2_outputs(reply)
                    got, got_labels = out["probabilities"], out["label"]
                if not np.array_equal(got, singles[lo:hi]):
                    failures.append(f"{t}/{r}: rows {lo}:{hi} got {got}, want {singles[lo:hi]}")
                if got_labels is not None and not np.array_equal(got_labels, labels[lo:hi]):
                    failures.append(f"{t}/{r}: labels {got_labels}, want {labels[lo:hi]}")
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{t}: {type(e).__name__}: {e}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:5]

    text = clf_server.get("/metrics").text
    buckets = metric_values(text, "mlflow_deploy_batch_size_bucket")
    count = metric_values(text, "mlflow_deploy_batch_size_count")[""] - before.get("", 0)
    assert buckets['{le="+Inf"}'] - buckets['{le="1.0"}'] > 0  # calls with more than one row
    sent = THREADS * REQUESTS
    print(f"batching: {sent} requests, {int(sizes.sum())} rows -> {int(count)} onnxruntime calls")
    # fewer onnxruntime calls than requests: concurrent requests were merged into batches
    assert count < sent, f"{sent} requests ran as {count} onnxruntime calls: nothing was merged"
    assert clf_server.alive()


def test_served_model_refuses_a_feed_missing_an_input(served):
    # ServedModel.run calls onnxruntime's session without the Python wrapper's checks (they
    # cost on every batch): a missing input must still be refused by name, never run.
    from mlflow_deploy_plugins.serving.model import ServedModel

    model = ServedModel(served.clf_bundle)
    assert len(model.input_names) > 1
    feed = {name: np.zeros((1, 1)) for name in model.input_names[1:]}
    with pytest.raises(ValueError, match=re.escape(model.input_names[0])):
        model.run(feed)
