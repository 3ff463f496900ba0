"""Promoted TensorFlow models served by the runtime (issue 16: "a Keras model and a SavedModel
promote and serve"): ``build_bundle`` of the ONNX twins, a real server process each, answers on
V2 and ``/invocations`` compared with the SOURCE tensorflow pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import tf_models

pytestmark = tf_models.REQUIRES_TF


@pytest.fixture(scope="module")
def tf_servers(tf_promoted, start_server, tmp_path_factory):
    from mlflow_deploy_plugins import build_bundle

    root = tmp_path_factory.mktemp("tf-bundles")
    uri = tf_promoted["uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        servers = {}
        for name in ("tf-two-inputs", "tf-module"):
            bundle = build_bundle(f"models:/{name}-onnx@champion", str(root / name))
            servers[name] = start_server(bundle.path, label=name)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return servers


def _v2_output(reply) -> np.ndarray:
    assert reply.status == 200, reply.text
    (out,) = reply.json()["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32"
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_two_input_keras_model_serves_v2_and_invocations(tf_servers, tf_store):
    server = tf_servers["tf-two-inputs"]
    data = tf_models.data(seed=11)
    a, b = data["a"][:7], data["b"][:7]
    expected = mlflow.pyfunc.load_model("models:/tf-two-inputs/1").predict({"a": a, "b": b})

    meta = server.get("/v2/models/tf-two-inputs-onnx").json()
    assert [(i["name"], i["shape"], i["datatype"]) for i in meta["inputs"]] == [
        ("a", [-1, 3], "FP32"),
        ("b", [-1, 2], "FP32"),
    ]
    body = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [7, 3], "data": a.tolist()},
            {"name": "b", "datatype": "FP32", "shape": [7, 2], "data": b.tolist()},
        ]
    }
    got = _v2_output(server.post("/v2/models/tf-two-inputs-onnx/infer", body))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)

    columns = ["a_0", "a_1", "a_2", "b_0", "b_1"]
    split = {"dataframe_split": {"columns": columns, "data": np.hstack([a, b]).tolist()}}
    reply = server.post("/invocations", split)
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], expected, atol=1e-5, rtol=1e-4)

    # a missing value is refused naming the column, as the twin's pyfunc refuses it
    split["dataframe_split"]["data"][2][4] = None
    reply = server.post("/invocations", split)
    assert reply.status == 422 and "b_1" in reply.text, reply.text


def test_saved_model_serves_v2_and_invocations(tf_servers, tf_store):
    server = tf_servers["tf-module"]
    x = tf_models.data(seed=12)["x"][:5]
    expected = mlflow.pyfunc.load_model("models:/tf-module/1").predict(x)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [5, 4], "data": x.tolist()}]}
    got = _v2_output(server.post("/v2/models/tf-module-onnx/infer", body))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    reply = server.post("/invocations", {"inputs": x.tolist()})
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], expected, atol=1e-5, rtol=1e-4)
