"""TensorFlow Serving's REST API (``/v1/models/...``) on our runtime, over real sockets.

The request/response pairs are ported from TF Serving's own documentation and tests (the upstream
test each case follows is named in its comment; the wording and code are ours), adapted to our
models: ``churn-onnx`` (conftest ``served``: a sklearn pipeline with three numeric columns and a
string column, one graph input per column, label + probabilities outputs, bundle built from
``models:/churn-onnx@champion``, so it has the label ``champion``) and ``reg`` (one float tensor
``[-1, 5]``, one output, built from ``models:/reg/1``, no label). Expected predictions come from
the source sklearn models, never from the server under test.

Upstream files: tensorflow/serving ``tensorflow_serving/g3doc/api_rest.md``,
``tensorflow_serving/model_servers/http_rest_api_handler_test.cc`` (``HttpRestApiHandlerTest``),
``tensorflow_serving/util/json_tensor_test.cc`` (``JsontensorTest``).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from mlflow_deploy_plugins.core.manifest import Manifest

CLF = "churn-onnx"
REG = "reg"
TOKEN = "tf-s3cret"
STATUS_DOC = {
    "model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
}


# ====================================================================== fixtures
@pytest.fixture(scope="module")
def clf_server(served, start_server):
    return start_server(served.clf_bundle, label="tf-clf")


@pytest.fixture(scope="module")
def reg_server(served, start_server):
    # a small offload threshold: big bodies are decoded and run off the event loop
    return start_server(served.reg_bundle, "--offload-body-bytes", "4096", label="tf-reg")


@pytest.fixture(scope="module")
def frame(kit):
    return kit.churn_frame(7, seed=5)


@pytest.fixture(scope="module")
def reg_rows(served):
    return served.reg_frame.sample(6, random_state=3)


def records(frame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def expected_clf(served, frame) -> tuple[list, np.ndarray]:
    return served.clf.predict(frame).tolist(), served.clf.predict_proba(frame)


def assert_clf_rows(served, frame, predictions):
    """Row format, several outputs: one object per instance, every output named."""
    labels, proba = expected_clf(served, frame)
    assert [set(p) for p in predictions] == [{"label", "probabilities"}] * len(frame)
    assert [p["label"] for p in predictions] == labels
    np.testing.assert_allclose([p["probabilities"] for p in predictions], proba, atol=1e-5)


def assert_error(reply, status: int, *needles: str):
    """TF Serving's error shape: exactly ``{"error": message}``; the message names the cause."""
    assert reply.status == status, (reply.status, reply.text)
    assert reply.headers["content-type"] == "application/json"
    doc = reply.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str), doc
    assert "Traceback" not in doc["error"]
    for needle in needles:
        assert needle in doc["error"], (needle, doc["error"])
    return doc["error"]


# ====================================================================== status and metadata
def test_get_status(clf_server):
    # HttpRestApiHandlerTest.GetStatus: every version, one version, a version label
    for path in (
        f"/v1/models/{CLF}",
        f"/v1/models/{CLF}/versions/1",
        f"/v1/models/{CLF}/labels/champion",
    ):
        reply = clf_server.get(path)
        assert reply.status == 200, (path, reply.text)
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == STATUS_DOC, path


def test_get_model_metadata(clf_server, reg_server, served):
    # HttpRestApiHandlerTest.GetModelMetadata (saved_model_half_plus_two_2_versions_metadata.json's
    # layout): model_spec + the serving_default signature with TF dtypes and -1 for the batch
    doc = clf_server.get(f"/v1/models/{CLF}/metadata").json()
    assert doc["model_spec"] == {"name": CLF, "signature_name": "", "version": "1"}
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    assert list(signatures) == ["serving_default"]
    sig = signatures["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    io = served.clf_manifest.io
    assert list(sig["inputs"]) == [b.name for b in io.inputs] == ["age", "income", "tenure", "city"]
    assert sig["inputs"]["city"]["dtype"] == "DT_STRING"
    assert {sig["inputs"][c]["dtype"] for c in ("age", "income", "tenure")} <= {
        "DT_FLOAT",
        "DT_DOUBLE",
    }
    for info in sig["inputs"].values():
        assert info["tensor_shape"] == {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
            "unknown_rank": False,
        }
    assert sig["outputs"]["label"]["dtype"] == "DT_INT64"
    assert sig["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == [
        "-1",
        "2",
    ]

    reg = reg_server.get(f"/v1/models/{REG}/versions/1/metadata").json()
    signature = reg["metadata"]["signature_def"]["signature_def"]["serving_default"]
    ((name, info),) = signature["inputs"].items()
    binding = Manifest.read(served.reg_bundle).io.inputs[0]
    assert name == binding.name == "X"
    assert info["dtype"] == {"float32": "DT_FLOAT", "float64": "DT_DOUBLE"}[binding.dtype]
    assert [d["size"] for d in info["tensor_shape"]["dim"]] == ["-1", "5"]


# ====================================================================== predict
def test_predict_single_tensor(reg_server, served, reg_rows):
    # HttpRestApiHandlerTest.Predict on half_plus_two, here a [-1, 5] float tensor: latest
    # version, a specific version, explicit signature_name, columnar inputs
    rows = reg_rows.to_numpy().tolist()
    want = served.reg.predict(reg_rows)
    cases = [
        (f"/v1/models/{REG}:predict", {"instances": rows}, "predictions"),
        (f"/v1/models/{REG}/versions/1:predict", {"instances": rows[:2]}, "predictions"),
        (
            f"/v1/models/{REG}/versions/1:predict",
            {"signature_name": "serving_default", "instances": rows[2:]},
            "predictions",
        ),
        (
            f"/v1/models/{REG}/versions/1:predict",
            {"signature_name": "serving_default", "inputs": rows},
            "outputs",
        ),
        (f"/v1/models/{REG}:predict", {"inputs": {"X": rows}}, "outputs"),  # named columnar
        (f"/v1/models/{REG}:predict", {"instances": [{"X": r} for r in rows]}, "predictions"),
    ]
    for path, body, key in cases:
        reply = reg_server.post(path, body)
        assert reply.status == 200, (body, reply.text)
        assert reply.headers["content-type"] == "application/json"
        doc = reply.json()
        assert list(doc) == [key]
        expected = want[2:] if body.get("instances") == rows[2:] else want[: len(doc[key])]
        # one output: unnamed, one value per instance (JsontensorTest.FromJsonSingleScalarTensor)
        np.testing.assert_allclose(doc[key], expected, rtol=1e-4, atol=1e-4)


def test_predict_table_model_rows_and_columns(clf_server, served, frame):
    # api_rest.md "Specifying input tensors in row format" (one object per instance) and "in
    # column format" (one object of tensors); the answers as JsontensorTest
    # .FromJsonMultipleNamedTensors: an object per instance / an object of tensors
    reply = clf_server.post(f"/v1/models/{CLF}:predict", {"instances": records(frame)})
    assert reply.status == 200, reply.text
    assert_clf_rows(served, frame, reply.json()["predictions"])

    columns = {c: frame[c].tolist() for c in frame.columns}
    reply = clf_server.post(f"/v1/models/{CLF}/labels/champion:predict", {"inputs": columns})
    assert reply.status == 200, reply.text
    outputs = reply.json()["outputs"]
    labels, proba = expected_clf(served, frame)
    assert outputs["label"] == labels
    np.testing.assert_allclose(outputs["probabilities"], proba, atol=1e-5)
    # [N, 1] per input, as the metadata declares, works as well as [N]
    nested = {c: [[v] for v in values] for c, values in columns.items()}
    reply = clf_server.post(f"/v1/models/{CLF}:predict", {"inputs": nested})
    assert reply.status == 200, reply.text
    assert reply.json()["outputs"]["label"] == labels
    # TF Serving's paths are case-insensitive (its regexes are (?i)); the model name is not
    reply = clf_server.post(f"/V1/Models/{CLF}/Versions/1:Predict", {"inputs": columns})
    assert reply.status == 200, reply.text
    assert reply.json()["outputs"]["label"] == labels
    assert_error(clf_server.post(f"/v1/models/{CLF.upper()}:predict", {"inputs": columns}), 404)


def test_predict_base64_string_values(clf_server, served, frame):
    # JsontensorTest.SingleNamedTensorBase64 / api_rest.md "Encoding binary values": a string
    # value as {"b64": ...} is the text it encodes
    plain = records(frame)
    encoded = [dict(r, city={"b64": base64.b64encode(r["city"].encode()).decode()}) for r in plain]
    reply = clf_server.post(f"/v1/models/{CLF}:predict", {"instances": encoded})
    assert reply.status == 200, reply.text
    assert_clf_rows(served, frame, reply.json()["predictions"])
    columns = {c: frame[c].tolist() for c in frame.columns}
    columns["city"] = [{"b64": base64.b64encode(v.encode()).decode()} for v in columns["city"]]
    reply = clf_server.post(f"/v1/models/{CLF}:predict", {"inputs": columns})
    assert reply.json()["outputs"]["label"] == expected_clf(served, frame)[0]

    bad = dict(plain[0], city={"b64": "***"})
    assert_error(
        clf_server.post(f"/v1/models/{CLF}:predict", {"instances": [bad]}), 400, "city", "base64"
    )
    odd = dict(plain[0], city={"text": "lyon"})
    assert_error(
        clf_server.post(f"/v1/models/{CLF}:predict", {"instances": [odd]}), 400, "city", "b64"
    )


def test_nan_and_infinity_tokens_are_read(reg_server, served, reg_rows):
    # api_rest.md "JSON conformance" / JsontensorTest.MultipleNamedTensor: NaN and Infinity
    # tokens are valid in requests. The verdict is then the model's: /invocations with the same
    # values as JSON null (MLflow's missing value) gives the same one.
    row = reg_rows.to_numpy()[0].tolist()
    rest = ", ".join(map(repr, row[1:]))
    reply = reg_server.post(f"/v1/models/{REG}:predict", f'{{"instances": [[NaN, {rest}]]}}')
    same = reg_server.post("/invocations", {"instances": [[None, *row[1:]]]})
    assert (reply.status == 200) == (same.status == 200), (reply.text, same.text)
    if reply.status != 200:
        assert_error(reply, 400, "x0")
    for token in ("Infinity", "-Infinity"):
        reply = reg_server.post(f"/v1/models/{REG}:predict", f'{{"inputs": [[{token}, {rest}]]}}')
        assert "Invalid JSON" not in reply.text and reply.status in (200, 400), reply.text


# ====================================================================== errors
def test_predict_model_name_version_errors(clf_server):
    # HttpRestApiHandlerTest.PredictModelNameVersionErrors: unknown model, unknown version -> 404,
    # naming what this server serves
    body = {"instances": [1]}
    assert_error(clf_server.post("/v1/models/foo:predict", body), 404, "Latest(foo)", CLF)
    assert_error(
        clf_server.post("/v1/models/foo/versions/50:predict", body), 404, "Specific(foo, 50)"
    )
    message = assert_error(
        clf_server.post(f"/v1/models/{CLF}/versions/99:predict", body), 404, "99"
    )
    assert "version 1" in message
    assert_error(clf_server.get(f"/v1/models/{CLF}/versions/2"), 404, "version 1")
    assert_error(clf_server.get(f"/v1/models/{CLF}/versions/2/metadata"), 404, "version 1")
    # the same version written another way is the same servable (TF parses it as a number)
    assert clf_server.get(f"/v1/models/{CLF}/versions/001").json() == STATUS_DOC


def test_predict_request_errors(clf_server, reg_server, frame):
    # HttpRestApiHandlerTest.PredictRequestErrors
    path = f"/v1/models/{REG}:predict"
    assert_error(reg_server.post(path, b""), 400, "empty")  # empty document
    assert_error(reg_server.post(path, b"instances = [1, 2]"), 400, "Invalid JSON")
    assert_error(
        reg_server.post(path, {"instances": [["x", "y", "z", "u", "v"]]}), 400, "x0", "float"
    )
    # nonexistent version label: INVALID_ARGUMENT upstream (400), naming the labels there are
    assert_error(
        clf_server.post(
            f"/v1/models/{CLF}/labels/Version_Nonexistent:predict", {"instances": records(frame)}
        ),
        400,
        "Unrecognized servable version label",
        "champion",
    )
    assert_error(
        reg_server.post(f"/v1/models/{REG}/labels/champion:predict", {"instances": [[1] * 5]}),
        400,
        "no labels",
    )
    assert_error(
        reg_server.post(path, {"signature_name": 100}),
        400,
        "'signature_name' key must be a string value",
    )


def test_unsupported_api_calls(clf_server):
    # HttpRestApiHandlerTest.UnsupportedApiCalls: paths outside the grammar are malformed (400)
    for method, path in [
        ("GET", "/v1/foo"),
        ("POST", "/v1/foo"),
        ("GET", "/v1/models/debug/model_name"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models/foo:predict"),
        ("GET", "/v1/models/foo/version/50:predict"),
        ("POST", "/v1/models/foo/version/50:regress"),
        ("POST", "/v1/models/foo/versions/HELLO:regress"),
        ("POST", "/v1/models/foo/metadata"),
        ("POST", "/v1/models/foo/label/some_label:regress"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
        ("POST", "/v1/models/foo/versions/some_label:regress"),
        ("POST", f"/v1/models/{CLF}"),
        ("GET", f"/v1/models/{CLF}:predict"),
    ]:
        body = b"{}" if method == "POST" else None
        assert_error(clf_server.request(method, path, body), 400, "Malformed request")
    assert_error(clf_server.get("/v1/models"), 400, "Missing model name")
    assert_error(
        clf_server.post(f"/v1/models/foo/versions/{2**64 - 1}:regress", b"{}"),
        400,
        "Failed to convert version",
    )
    assert clf_server.get(f"/v1/models/{CLF}").status == 200  # still serving


def test_classify_and_regress_are_not_implemented(clf_server):
    # HttpRestApiHandlerTest.Classify / .Regress: our models have no Classify or Regress
    # signature (one predict signature), so the methods answer 501 with the reason
    for path in (
        f"/v1/models/{CLF}:classify",
        f"/v1/models/{CLF}/versions/1:regress",
        f"/v1/models/{CLF}/labels/champion:classify",
    ):
        body = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
        message = assert_error(clf_server.post(path, body), 501, "signature", ":predict")
        assert ("Classify" in message) == path.endswith("classify")
    assert_error(clf_server.post("/v1/models/foo:classify", {"examples": []}), 404, "Latest(foo)")


@pytest.mark.parametrize(
    "body, needles",
    [
        # the bad input: unknown signature names
        (
            {"signature_name": "predict_images", "instances": [[1.0] * 5]},
            ["predict_images", "serving_default"],
        ),
        # instances of the wrong rank (a flat list for a [-1, 5] input)
        ({"instances": [1.0, 2.0, 3.0, 4.0, 5.0]}, ["rank 1", "'X'", "rank 2"]),
        ({"inputs": [[[1.0] * 5]]}, ["rank 3", "'X'"]),
        ({"instances": 1.0}, ["rank 0"]),
        # mixed row/columnar bodies (JsontensorTest.SingleUnnamedTensorErrors)
        ({"instances": [[1.0] * 5], "inputs": [[1.0] * 5]}, ["only one of", "both"]),
        # missing key
        ({"signature_name": "serving_default"}, ["Missing 'inputs'", "'instances'"]),
        ({"examples": [{"x": 1}]}, ["Missing 'inputs'", "examples"]),
        ([[1.0] * 5], ["JSON object", "list"]),
        # wrong types and shapes (JsontensorTest.SingleUnnamedTensorErrors)
        ({"instances": [[1, 2], [3, 4], [5, 6, 7]]}, ["Row 0 has 2 values", "x4"]),
        ({"instances": [[1, 2, 3, 4, 5], ["a", "b", "c", "d", "e"]]}, ["'x0'", "float", "row 1"]),
        (
            {"instances": [[1, 2, 3, 4, 5], {"X": [1, 2, 3, 4, 5]}]},
            ["expecting value/list but got object", "element 1"],
        ),
        (
            {"instances": [{"X": [1, 2, 3, 4, 5]}, [1, 2, 3, 4, 5]]},
            ["expecting object but got list", "element 1"],
        ),
        ({"instances": [{"Y": [1, 2, 3, 4, 5]}]}, ["Unknown input 'Y'", "'X'"]),
        ({"instances": []}, ["no rows"]),
    ],
)
def test_bad_input_single_tensor(reg_server, body, needles):
    reply = reg_server.post(f"/v1/models/{REG}:predict", json.dumps(body))
    assert_error(reply, 400, *needles)


def test_bad_input_table_model(clf_server, frame):
    path = f"/v1/models/{CLF}:predict"
    rows = records(frame)
    # a plain list is one unnamed input; this model has four (TF Serving refuses it too)
    assert_error(
        clf_server.post(path, {"instances": frame.to_numpy().tolist()}),
        400,
        "plain list",
        "4 named inputs",
        "city",
    )
    assert_error(clf_server.post(path, {"inputs": [1, 2, 3]}), 400, "plain list")
    # wrong type in a column, named
    bad = [dict(rows[0], age="old")]
    assert_error(clf_server.post(path, {"instances": bad}), 400, "age")
    bad = {c: frame[c].tolist() for c in frame.columns}
    bad["city"] = [1] * len(frame)
    assert_error(clf_server.post(path, {"inputs": bad}), 400, "city", "string")
    # missing and unknown inputs, named
    missing = [{k: v for k, v in r.items() if k != "income"} for r in rows]
    assert_error(clf_server.post(path, {"instances": missing}), 400, "income")
    extra = [dict(r, colour="red") for r in rows]
    assert_error(clf_server.post(path, {"instances": extra}), 400, "Unknown input 'colour'")
    ragged = {c: frame[c].tolist() for c in frame.columns}
    ragged["age"] = ragged["age"][:-1]
    assert_error(clf_server.post(path, {"inputs": ragged}), 400, "age")
    assert clf_server.post(path, {"instances": rows}).status == 200  # still serving


# ====================================================================== one dataplane
def test_tf_serving_client_script(clf_server, served, frame):
    # A client written for TF Serving, unchanged: plain `requests` calls to the documented paths
    # (api_rest.md "Example"), the body sent as `curl -d` sends it (a form content type).
    import requests

    url = f"http://127.0.0.1:{clf_server.port}"
    model = CLF
    status = requests.get(f"{url}/v1/models/{model}", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = requests.get(f"{url}/v1/models/{model}/metadata", timeout=10).json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    names = list(signature["inputs"])
    instances = [{name: row[name] for name in names} for row in records(frame)]
    reply = requests.post(
        f"{url}/v1/models/{model}:predict",
        data=json.dumps({"instances": instances}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    assert_clf_rows(served, frame, reply.json()["predictions"])
    version = status["model_version_status"][0]["version"]
    reply = requests.post(
        f"{url}/v1/models/{model}/versions/{version}:predict",
        json={"inputs": {n: [i[n] for i in instances] for n in names}},
        timeout=10,
    )
    assert reply.json()["outputs"]["label"] == served.clf.predict(frame).tolist()
    reply = requests.post(
        f"{url}/v1/models/nope:predict", json={"instances": instances}, timeout=10
    )
    assert reply.status_code == 404 and "error" in reply.json()


def test_same_corpus_same_answers_as_invocations(clf_server, kit):
    # One dataplane: MLflow's `instances` on /invocations and TF Serving's `instances` on
    # :predict decode through the same code; the same corpus gets the same verdicts and labels.
    frame = kit.churn_frame(9, seed=77)
    rows = records(frame)
    corpus = [
        {"instances": rows},
        {"instances": rows[:1]},
        {"inputs": {c: frame[c].tolist() for c in frame.columns}},
        {"instances": [dict(r, city="marseille") for r in rows[:3]]},  # a city it never saw
        {"instances": [dict(rows[0], age=None)]},  # a missing value
        {"instances": [dict(rows[0], age="old")]},
        {"instances": [{k: v for k, v in rows[0].items() if k != "tenure"}]},
        {"instances": []},
        {"inputs": {"age": [1.0]}},
    ]
    for body in corpus:
        mlflow_reply = clf_server.post("/invocations", body)
        tf_reply = clf_server.post(f"/v1/models/{CLF}:predict", body)
        assert (mlflow_reply.status == 200) == (tf_reply.status == 200), (
            body,
            mlflow_reply.text,
            tf_reply.text,
        )
        if tf_reply.status != 200:
            assert mlflow_reply.status in (400, 422) and tf_reply.status == 400
            continue
        doc = tf_reply.json()
        labels = (
            doc["outputs"]["label"]
            if "outputs" in doc
            else [p["label"] for p in doc["predictions"]]
        )
        assert labels == mlflow_reply.json()["predictions"], body


def test_metrics_payload_log_and_access_log(served, start_server, frame, tmp_path):
    # the route labels of /metrics, the payload log's records, the access log: the dataplane's,
    # not a front end's
    logs = tmp_path / "payloads"
    server = start_server(
        served.clf_bundle, "--payload-log", str(logs), "--access-log", label="tf-logs"
    )
    rid = "tf-payload-1"
    reply = server.post(
        f"/v1/models/{CLF}:predict", {"instances": records(frame)}, {"X-Request-Id": rid}
    )
    assert reply.status == 200 and reply.headers["x-request-id"] == rid
    server.post(f"/v1/models/{CLF}/versions/1:predict", {"inputs": records(frame)[0]})
    server.get(f"/v1/models/{CLF}/metadata")
    assert server.post(f"/v1/models/{CLF}/versions/7:predict", b"{}").status == 404
    metrics = server.get("/metrics").text
    counts = {
        line[line.index("{") + 1 : line.rindex("}")]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("mlflow_deploy_requests_total{")
    }
    assert counts['route="/v1/models/{name}:predict",status="200"'] == 2, metrics
    assert counts['route="/v1/models/{name}/metadata",status="200"'] == 1, metrics
    assert counts['route="other",status="404"'] == 1, metrics
    assert server.stop() == 0  # SIGTERM flushes the payload log and the access log
    from mlflow_deploy_plugins.core.payload_format import read_records

    by_id = {r["request_id"]: r for r in read_records(logs)}
    assert len(by_id) == 2  # the two predictions, not the refusal
    record = by_id[rid]
    assert (record["model"], record["version"], record["n_rows"]) == (CLF, "1", len(frame))
    assert record["inputs"]["city"] == frame["city"].tolist()
    assert record["outputs"]["label"] == served.clf.predict(frame).tolist()
    access = [json.loads(line) for line in server.log().splitlines() if '"http"' in line]
    seen = [(a["http"]["method"], a["http"]["path"], a["http"]["status"]) for a in access]
    assert ("POST", f"/v1/models/{CLF}:predict", 200) in seen
    assert ("POST", f"/v1/models/{CLF}/versions/7:predict", 404) in seen


def test_auth_token_is_required(served, start_server, kit, frame):
    server = start_server(
        served.clf_bundle, env=kit.server_env(MLFLOW_DEPLOY_AUTH_TOKEN=TOKEN), label="tf-auth"
    )
    body = {"instances": records(frame)}
    for method, path in [
        ("POST", f"/v1/models/{CLF}:predict"),
        ("GET", f"/v1/models/{CLF}"),
        ("GET", f"/v1/models/{CLF}/metadata"),
        ("POST", f"/v1/models/{CLF}:classify"),
        ("GET", "/v1/models/guess"),
    ]:
        reply = server.request(method, path, body if method == "POST" else None)
        assert_error(reply, 401, "bearer token")
        assert reply.headers["www-authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    reply = server.post(f"/v1/models/{CLF}:predict", body, auth)
    assert reply.status == 200, reply.text
    assert_clf_rows(served, frame, reply.json()["predictions"])
    assert server.get(f"/v1/models/{CLF}", headers=auth).json() == STATUS_DOC


def test_big_bodies_are_offloaded_and_limited(reg_server, served, start_server, kit):
    # over --offload-body-bytes (4096): decoded and run on the offload pool, same answers
    big = served.reg_frame.head(300)
    body = {"instances": big.to_numpy().tolist()}
    assert len(json.dumps(body)) > 4096
    reply = reg_server.post(f"/v1/models/{REG}:predict", body)
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(
        reply.json()["predictions"], served.reg.predict(big), rtol=1e-4, atol=1e-4
    )
    bad = {"instances": [[1.0] * 5] * 300 + [[1.0] * 4]}
    assert_error(reg_server.post(f"/v1/models/{REG}:predict", bad), 400, "Row 300")
    # over --max-body-bytes: 413 before the body is read into memory
    small = start_server(served.reg_bundle, "--max-body-bytes", "2048", label="tf-small")
    reply = small.post(f"/v1/models/{REG}:predict", body)
    assert reply.status == 413 and "error" in reply.json()
