"""The Open Inference Protocol over gRPC (``--grpc-port``), against a real server process, with
the stock clients: ``tritonclient.grpc`` (sync and aio) and raw calls built from the schema.

The same corpus goes over gRPC and over HTTP V2 and must get the same answers (one dataplane);
the errors are the REST ones with the gRPC status of the same HTTP status.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import triton_grpc

from mlflow_deploy_plugins.serving.grpc_schema import MESSAGES

MODEL = "churn-onnx"


def columns(frame) -> dict:
    """The frame as the child process's tritonclient scenarios take it (city as BYTES)."""
    return {c: frame[c].tolist() for c in frame.columns}


def triton_infer(port, frame, **kwargs) -> dict:
    return triton_grpc.run(
        "infer",
        port=port,
        model=MODEL,
        columns=columns(frame),
        strings=["city"],
        outputs=kwargs.pop("outputs", ["label", "probabilities"]),
        **kwargs,
    )


def raw_call(port: int, method: str, request, metadata=()):
    """One RPC with our own message classes (typed contents, odd requests the clients never send)."""
    request_name, response_name = (
        MESSAGES[m]
        for m in {
            "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
            "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
            "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
        }[method]
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=request_name.SerializeToString,
            response_deserializer=response_name.FromString,
        )
        return call(request, metadata=metadata, timeout=30)


def typed_request(frame, **overrides):
    request = MESSAGES["ModelInferRequest"](model_name="churn-onnx", **overrides)
    for column in frame.columns:
        tensor = request.inputs.add(name=column, shape=[len(frame)])
        if column == "city":
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in frame[column])
        else:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(frame[column].astype(float))
    return request


def test_health_and_metadata_with_tritonclient(grpc_server, served):
    found = triton_grpc.run("health", port=grpc_server.grpc_port, model=MODEL)
    assert found["live"] and found["ready"]
    assert found["model_ready"] and found["model_ready_v1"] and not found["other_ready"]
    assert found["server_name"] == "mlflow-deploy-plugins"
    assert "binary_tensor_data" in found["extensions"]
    meta = found["metadata"]
    http_meta = grpc_server.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == http_meta["name"] and meta["versions"] == http_meta["versions"]
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in http_meta["inputs"]]
    assert [o["datatype"] for o in meta["outputs"]] == [o["datatype"] for o in http_meta["outputs"]]


def test_infer_answers_like_http_v2_and_the_source(grpc_server, served, kit):
    frame = served.clf_frame.head(50)
    result = triton_infer(grpc_server.grpc_port, frame, request_id="r-1")
    assert result["id"] == "r-1"
    http = grpc_server.post(f"/v2/models/{MODEL}/infer", kit.v2_columns_body(frame)).json()
    for output in http["outputs"]:
        over_grpc = result["outputs"][output["name"]]
        assert over_grpc["shape"] == output["shape"]
        if output["datatype"] == "BYTES":
            assert over_grpc["data"] == output["data"]
        else:
            np.testing.assert_array_equal(
                np.asarray(over_grpc["data"], over_grpc["dtype"]),
                np.asarray(output["data"], over_grpc["dtype"]),
            )
    # V2 carries the graph's label tensor (the class index: False/True -> 0/1)
    labels = np.asarray(result["outputs"]["label"]["data"])
    expected = served.source_pyfunc.predict(frame)
    assert labels.astype(int).tolist() == np.asarray(expected).astype(int).tolist()


def test_typed_contents_and_requested_outputs(grpc_server, served, kit):
    frame = served.clf_frame.head(7)
    request = typed_request(frame, id="typed")
    request.outputs.add(name="probabilities")
    response = raw_call(grpc_server.grpc_port, "ModelInfer", request)
    assert [o.name for o in response.outputs] == ["probabilities"] and response.id == "typed"
    probabilities = np.frombuffer(response.raw_output_contents[0], np.float32)
    http = grpc_server.post("/v2/models/churn-onnx/infer", kit.v2_columns_body(frame)).json()
    (expected,) = [o for o in http["outputs"] if o["name"] == "probabilities"]
    np.testing.assert_allclose(probabilities, np.asarray(expected["data"], np.float32))


def test_the_aio_client_infers_concurrently(grpc_server, served):
    frame = served.clf_frame.head(3)
    found = triton_grpc.run(
        "aio_infer",
        port=grpc_server.grpc_port,
        model=MODEL,
        columns=columns(frame),
        strings=["city"],
        calls=20,
    )
    first = found["probabilities"][0]
    assert len(found["probabilities"]) == 20 and len(first) == 6
    assert all(p == first for p in found["probabilities"])


@pytest.mark.parametrize(
    "mutate, code, fragment",
    [
        (lambda r: setattr(r, "model_name", "nope"), "NOT_FOUND", "Unknown model 'nope'"),
        (lambda r: setattr(r, "model_version", "9"), "NOT_FOUND", "Unknown version '9'"),
        (lambda r: r.inputs.pop(), "INVALID_ARGUMENT", "city"),
        (lambda r: setattr(r.inputs[0], "datatype", "INT64"), "INVALID_ARGUMENT", "age"),
        (lambda r: r.outputs.add(name="nope"), "INVALID_ARGUMENT", "nope"),
        (
            lambda r: (r.outputs.add(name="label"), r.outputs.add(name="label")),
            "INVALID_ARGUMENT",
            "label",
        ),
        (
            lambda r: r.raw_input_contents.append(b"\0" * 8),
            "INVALID_ARGUMENT",
            "raw_input_contents",
        ),
        (lambda r: setattr(r.inputs[3], "datatype", "FP16"), "INVALID_ARGUMENT", "city"),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "missing-input",
        "wrong-datatype",
        "unknown-output",
        "duplicate-output",
        "raw-count",
        "no-typed-field",
    ],
)
def test_bad_requests_get_the_rest_cause_with_the_grpc_status(
    grpc_server, served, mutate, code, fragment
):
    request = typed_request(served.clf_frame.head(2))
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        raw_call(grpc_server.grpc_port, "ModelInfer", request)
    assert info.value.code().name == code
    assert fragment in info.value.details(), info.value.details()
    assert grpc_server.alive()


def test_raw_contents_of_the_wrong_size_are_refused(grpc_server, served):
    frame = served.clf_frame.head(2)
    found = triton_grpc.run(
        "infer_raw_of_wrong_size",
        port=grpc_server.grpc_port,
        model=MODEL,
        columns=columns(frame),
        strings=["city"],
    )
    assert found["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "age" in found["message"]


def test_messages_over_the_size_limit_are_resource_exhausted(start_server, served, kit):
    port = kit.free_port()
    server = start_server(
        served.clf_bundle, "--grpc-port", str(port), "--max-body-bytes", "65536", label="grpc-small"
    )
    frame = served.clf_frame.sample(5000, replace=True, random_state=0)
    with pytest.raises(grpc.RpcError) as info:
        raw_call(port, "ModelInfer", typed_request(frame))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.alive()


def test_the_token_is_the_authorization_metadata(grpc_token_server, served):
    port = grpc_token_server.grpc_port
    health = triton_grpc.run("health", port=port, model=MODEL, metadata=False)
    assert health["live"] and health["ready"] and health["model_ready"]  # health stays open
    frame = served.clf_frame.head(2)
    denied = triton_infer(port, frame)
    assert denied["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert "authorization: Bearer" in denied["error"]["message"]
    assert triton_infer(port, frame, token="no")["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    meta = triton_grpc.run("metadata_with", port=port, model=MODEL)
    assert meta["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert (
        triton_grpc.run("metadata_with", port=port, model=MODEL, token=grpc_token_server.token)[
            "name"
        ]
        == MODEL
    )
    result = triton_infer(port, frame, token=grpc_token_server.token)
    assert result["outputs"]["probabilities"]["shape"][0] == 2


def _model_ready(port: int, name: str, metadata=()) -> bool:
    request = MESSAGES["ModelReadyRequest"](name=name)
    return raw_call(port, "ModelReady", request, metadata).ready


def test_model_ready_tells_no_names_without_the_token(grpc_token_server, grpc_server):
    # As HTTP's model ready (open): without the token every name gets the server's readiness,
    # so a guessed name learns nothing; with it (or with no token set) an unknown name is False.
    port = grpc_token_server.grpc_port
    assert _model_ready(port, MODEL) and _model_ready(port, "guessed-name")
    auth = (("authorization", f"Bearer {grpc_token_server.token}"),)
    assert _model_ready(port, MODEL, auth)
    assert not _model_ready(port, "guessed-name", auth)
    assert _model_ready(port, "guessed-name", (("authorization", "Bearer wrong"),))
    assert not _model_ready(grpc_server.grpc_port, "guessed-name")
    assert _model_ready(grpc_server.grpc_port, MODEL)


def test_grpc_calls_are_counted_in_the_shared_metrics(grpc_server, served):
    assert "outputs" in triton_infer(grpc_server.grpc_port, served.clf_frame.head(1))
    metrics = grpc_server.get("/metrics").text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("mlflow_deploy_requests_total{")
        and 'route="grpc:/inference.GRPCInferenceService/ModelInfer"' in line
        and 'status="200"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
