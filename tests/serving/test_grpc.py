"""The Open Inference Protocol over gRPC (``--grpc-port``), against a real server process, with
the stock clients: ``tritonclient.grpc`` (sync and aio) and raw calls built from the schema.

The same corpus goes over gRPC and over HTTP V2 and must get the same answers (one dataplane);
the errors are the REST ones with the gRPC status of the same HTTP status.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from conftest import CLF_COLUMNS, free_port, v2_columns_body

from mlflow_deploy_plugins.serving.grpc_schema import MESSAGES

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
TOKEN = "grpc-s3cret"


@pytest.fixture(scope="module")
def grpc_server(start_server, served):
    port = free_port()
    server = start_server(served.clf_bundle, "--grpc-port", str(port), label="grpc")
    server.grpc_port = port
    return server


@pytest.fixture(scope="module")
def grpc_token_server(start_server, served, tmp_path_factory):
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN)
    port = free_port()
    server = start_server(
        served.clf_bundle,
        "--grpc-port",
        str(port),
        "--auth-token-file",
        str(token),
        label="grpc-auth",
    )
    server.grpc_port = port
    return server


def triton_inputs(frame):
    inputs = []
    for column in CLF_COLUMNS:
        datatype = "BYTES" if column == "city" else "FP64"
        tensor = tritonclient_grpc.InferInput(column, [len(frame)], datatype)
        values = frame[column].to_numpy(object if datatype == "BYTES" else np.float64)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs


def raw_call(port: int, method: str, request, metadata=()):
    """One RPC with our own message classes (typed contents, odd requests the clients never send)."""
    request_name, response_name = (
        MESSAGES[m]
        for m in {
            "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
            "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
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
    for column in CLF_COLUMNS:
        tensor = request.inputs.add(name=column, shape=[len(frame)])
        if column == "city":
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in frame[column])
        else:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(frame[column].astype(float))
    return request


def test_health_and_metadata_with_tritonclient(grpc_server, served):
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_server.grpc_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("churn-onnx") and client.is_model_ready("churn-onnx", "1")
    assert not client.is_model_ready("other-model")
    server = client.get_server_metadata()
    assert server.name == "mlflow-deploy-plugins" and "binary_tensor_data" in server.extensions
    meta = client.get_model_metadata("churn-onnx", as_json=True)
    http_meta = grpc_server.get("/v2/models/churn-onnx").json()
    assert meta["name"] == http_meta["name"] and meta["versions"] == http_meta["versions"]
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in http_meta["inputs"]]
    assert [o["datatype"] for o in meta["outputs"]] == [o["datatype"] for o in http_meta["outputs"]]


def test_infer_answers_like_http_v2_and_the_source(grpc_server, served):
    frame = served.clf_frame.head(50)
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_server.grpc_port}")
    result = client.infer("churn-onnx", triton_inputs(frame), request_id="r-1")
    assert result.get_response().id == "r-1"
    http = grpc_server.post("/v2/models/churn-onnx/infer", v2_columns_body(frame)).json()
    for output in http["outputs"]:
        over_grpc = result.as_numpy(output["name"])
        assert list(over_grpc.shape) == output["shape"]
        if output["datatype"] == "BYTES":
            assert [v.decode() for v in over_grpc.reshape(-1)] == output["data"]
        else:
            np.testing.assert_array_equal(
                over_grpc.reshape(-1), np.asarray(output["data"], over_grpc.dtype)
            )
    # V2 carries the graph's label tensor (the class index: False/True -> 0/1)
    labels = result.as_numpy("label").reshape(-1)
    expected = served.source_pyfunc.predict(frame)
    assert labels.astype(int).tolist() == np.asarray(expected).astype(int).tolist()


def test_typed_contents_and_requested_outputs(grpc_server, served):
    frame = served.clf_frame.head(7)
    request = typed_request(frame, id="typed")
    request.outputs.add(name="probabilities")
    response = raw_call(grpc_server.grpc_port, "ModelInfer", request)
    assert [o.name for o in response.outputs] == ["probabilities"] and response.id == "typed"
    probabilities = np.frombuffer(response.raw_output_contents[0], np.float32)
    http = grpc_server.post("/v2/models/churn-onnx/infer", v2_columns_body(frame)).json()
    (expected,) = [o for o in http["outputs"] if o["name"] == "probabilities"]
    np.testing.assert_allclose(probabilities, np.asarray(expected["data"], np.float32))


def test_the_aio_client_infers_concurrently(grpc_server, served):
    import tritonclient.grpc.aio as aioclient

    frame = served.clf_frame.head(3)

    async def main():
        client = aioclient.InferenceServerClient(f"127.0.0.1:{grpc_server.grpc_port}")
        try:
            results = await asyncio.gather(
                *(client.infer("churn-onnx", triton_inputs(frame)) for _ in range(20))
            )
        finally:
            await client.close()
        return results

    results = asyncio.run(main())
    first = results[0].as_numpy("probabilities")
    assert all(np.array_equal(r.as_numpy("probabilities"), first) for r in results)


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
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_server.grpc_port}")
    inputs = triton_inputs(frame)
    inputs[0]._raw_content = b"\0" * 12  # 2 FP64 need 16 bytes
    with pytest.raises(tritonclient_grpc.InferenceServerException) as info:
        client.infer("churn-onnx", inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "age" in info.value.message()


def test_messages_over_the_size_limit_are_resource_exhausted(start_server, served):
    port = free_port()
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
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready()  # health stays open
    frame = served.clf_frame.head(2)
    with pytest.raises(tritonclient_grpc.InferenceServerException) as denied:
        client.infer("churn-onnx", triton_inputs(frame))
    assert denied.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(tritonclient_grpc.InferenceServerException):
        client.infer("churn-onnx", triton_inputs(frame), headers={"authorization": "Bearer no"})
    with pytest.raises(tritonclient_grpc.InferenceServerException):
        client.get_model_metadata("churn-onnx")
    result = client.infer(
        "churn-onnx", triton_inputs(frame), headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert result.as_numpy("probabilities").shape[0] == 2


def test_grpc_calls_are_counted_in_the_shared_metrics(grpc_server, served):
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_server.grpc_port}")
    client.infer("churn-onnx", triton_inputs(served.clf_frame.head(1)))
    metrics = grpc_server.get("/metrics").text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("mlflow_deploy_requests_total{")
        and 'route="grpc:/inference.GRPCInferenceService/ModelInfer"' in line
        and 'status="200"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
