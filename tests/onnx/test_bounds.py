"""Probabilities stay in [0, 1]: a converted random forest averages its trees in float32 and
said -1.19e-07 where the source says 0 (found serving a 10-tree forest from the shell)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from helpers import log_sklearn, tracking_store
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core.iospec import PROBABILITIES, IOSpec, OutputSpec
from mlflow_deploy_plugins.onnx import bounds


def _forest():
    x, y = make_classification(n_samples=300, n_features=4, random_state=0)
    frame = pd.DataFrame(x, columns=list("abcd"))
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(frame, y)
    probe = pd.concat([frame, pd.DataFrame(np.full((1, 4), 0.1), columns=list("abcd"))])
    return model, frame, probe


def test_the_twin_of_a_forest_serves_no_probability_outside_0_1(tmp_path):
    model, frame, probe = _forest()
    with tracking_store(tmp_path):
        info = log_sklearn(model, frame.head(5))
        result = mlflow_deploy_plugins.convert(info.model_uri, sample=frame)
    assert any("bounded to [0, 1]" in note for note in result.notes)
    # the twin's graph, with the tensor before the Clip exposed too
    twin = onnx.ModelProto()
    twin.CopyFrom(result.onnx_model)
    twin.graph.output.append(onnx.ValueInfoProto(name="probabilities_before_clip"))
    session = ort.InferenceSession(twin.SerializeToString())
    feed = result.io.encode_columns({c: probe[c].to_numpy() for c in result.io.columns})
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feed), strict=True))
    # one row at a time (how a served 1-row request runs: a batch may sum in another order)
    one = {name: value[-1:] for name, value in feed.items()}
    unclipped = session.run(["probabilities_before_clip"], one)[0]
    assert unclipped.min() < 0 or unclipped.max() > 1, "the graph no longer overshoots: moot"
    served = session.run(["probabilities"], one)[0]
    assert served.min() >= 0.0 and served.max() <= 1.0
    np.testing.assert_array_equal(served, model.predict_proba(probe.tail(1)).astype(np.float32))
    probabilities = got["probabilities"]
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    expected = model.predict_proba(probe)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(got["label"].ravel(), model.predict(probe))
    assert result.parity.passed


def _io(role=PROBABILITIES):
    return IOSpec(inputs=(), outputs=(OutputSpec("probabilities", "float32", role),))


def _graph_with_output(values: np.ndarray, opset: int) -> onnx.ModelProto:
    const = onnx.helper.make_node(
        "Constant",
        [],
        ["probabilities"],
        value=onnx.numpy_helper.from_array(values.astype(np.float32)),
    )
    double = onnx.helper.make_node("Identity", ["probabilities"], ["copy"])
    graph = onnx.helper.make_graph(
        [const, double],
        "g",
        [],
        [
            onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [2]),
            onnx.helper.make_tensor_value_info("copy", onnx.TensorProto.FLOAT, [2]),
        ],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def test_clip_keeps_names_and_inner_consumers_at_old_and_new_opsets():
    values = np.array([-1e-7, 1.0000001])
    for opset in (9, 17):
        model = _graph_with_output(values, opset)
        clipped, names = bounds.clip_probabilities(model, _io(), {PROBABILITIES: [0.0, 1.0]})
        assert names == ["probabilities"]
        assert [o.name for o in clipped.graph.output] == ["probabilities", "copy"]
        out = ort.InferenceSession(clipped.SerializeToString()).run(None, {})
        np.testing.assert_array_equal(out[0], [0.0, 1.0])
        # a node that read the output inside the graph reads the unclipped tensor
        np.testing.assert_array_equal(out[1], values.astype(np.float32))
        assert len(model.graph.node) == 2  # the input model is not modified


def test_no_clip_where_the_source_itself_leaves_0_1_or_the_role_is_not_probabilities():
    model = _graph_with_output(np.array([0.5, 0.5]), 17)
    for io, reference in [
        (_io(), {PROBABILITIES: [-0.5, 2.0]}),  # logits called probabilities: left alone
        (_io(), {}),
        (_io("value"), {PROBABILITIES: [0.0, 1.0]}),
    ]:
        same, names = bounds.clip_probabilities(model, io, reference)
        assert same is model and names == []
