"""TensorFlow / Keras models logged with ``mlflow.tensorflow`` -> ONNX twins (issue 16, item 1).

Real TensorFlow, tf2onnx, onnxruntime and MLflow: the models are built and promoted once per
session (``tf_promoted`` in tests/conftest.py); the twins are compared with the SOURCE pyfunc
(``mlflow.pyfunc.load_model`` of the tensorflow flavor) on rows the gate never saw.
"""

from __future__ import annotations

import sys

import mlflow
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import tf_models

from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters.base import ConversionOptions, SourceModel

pytestmark = tf_models.REQUIRES_TF


def _fresh(name: str):
    """Inputs the gate never saw, as the source pyfunc takes them and as a table for the twin."""
    data = tf_models.data(seed=7)
    if name == "tf-two-inputs":
        source_input = {"a": data["a"], "b": data["b"]}
        table = pd.DataFrame(
            np.hstack([data["a"], data["b"]]), columns=["a_0", "a_1", "a_2", "b_0", "b_1"]
        )
        return source_input, table
    return data["x"], pd.DataFrame(data["x"], columns=[f"f{i}" for i in range(4)])


@pytest.mark.parametrize("name", ["tf-mlp", "tf-two-inputs", "tf-module"])
def test_promoted_twin_predicts_like_the_source(tf_store, name):
    promotion = tf_store["promotions"][name]
    assert promotion.onnx_name == f"{name}-onnx" and str(promotion.onnx_version) == "1"
    source = mlflow.pyfunc.load_model(f"models:/{name}/1")
    twin = mlflow.pyfunc.load_model(f"models:/{name}-onnx@champion")
    source_input, table = _fresh(name)
    expected = np.asarray(source.predict(source_input))
    # the twin's pyfunc takes what the source's takes: an array, or the dict of named tensors
    got = twin.predict(source_input)
    assert isinstance(got, np.ndarray) and got.shape == expected.shape
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    # the batch axis is dynamic: one row answers like the first of many
    one = twin.get_raw_model().predict(table.head(1))
    np.testing.assert_allclose(one, expected[:1], atol=1e-5, rtol=1e-4)


def test_twin_io_contract_follows_the_signature(tf_store):
    io = mlflow.pyfunc.load_model("models:/tf-two-inputs-onnx@champion").get_raw_model().io
    assert [(b.name, b.columns, b.dtype, b.shape) for b in io.inputs] == [
        ("a", ("a_0", "a_1", "a_2"), "float32", (None, 3)),
        ("b", ("b_0", "b_1"), "float32", (None, 2)),
    ]
    assert [(o.name, o.role, o.shape) for o in io.outputs] == [("output", "value", (None, 1))]
    assert io.accepts_missing == ()  # a network has no missing-value semantics: refused
    mlp = mlflow.pyfunc.load_model("models:/tf-mlp-onnx@champion").get_raw_model().io
    assert [(b.name, b.shape) for b in mlp.inputs] == [("input", (None, 4))]
    assert [(o.name, o.shape) for o in mlp.outputs] == [("output", (None, 3))]
    module = mlflow.pyfunc.load_model("models:/tf-module-onnx@champion").get_raw_model()
    assert "synthesized" in module.conf["parity"]["sample_origin"]  # no sample: the example's


def test_two_input_twin_signature_names_the_tensors(tf_store):
    """The twin's MLflow signature is the source's (named tensors), and its raw model also takes
    the table columns ``a_0 .. b_1`` (what ``/invocations`` and the payload log use)."""
    source_input, table = _fresh("tf-two-inputs")
    twin = mlflow.pyfunc.load_model("models:/tf-two-inputs-onnx@champion")
    inputs = twin.metadata.signature.inputs
    assert inputs.is_tensor_spec()
    assert [(s.name, s.shape, s.type) for s in inputs.inputs] == [
        ("a", (-1, 3), np.dtype("float32")),
        ("b", (-1, 2), np.dtype("float32")),
    ]
    expected = mlflow.pyfunc.load_model("models:/tf-two-inputs/1").predict(source_input)
    got = twin.get_raw_model().predict(table)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_missing_values_are_refused_naming_the_column(tf_store):
    _, table = _fresh("tf-two-inputs")
    table.loc[3, "b_1"] = np.nan
    twin = mlflow.pyfunc.load_model("models:/tf-two-inputs-onnx@champion").get_raw_model()
    with pytest.raises(InvalidInputError, match="b_1"):
        twin.predict(table)
    source_input, _ = _fresh("tf-two-inputs")
    source_input["b"][3, 1] = np.nan
    with pytest.raises(InvalidInputError, match="Column 'b_1' contains missing values"):
        twin.predict(source_input)


@pytest.mark.parametrize("given, served", [("features", "features"), (None, "input")])
def test_the_one_input_keeps_the_name_keras_gave_it(tmp_path, given, served):
    """TF Serving's signature (and its clients' columnar and object-row bodies) name the Keras
    input; MLflow's signature of a numpy example does not. A generated name stays "input"."""
    import keras

    x = tf_models.data()["x"]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name=given) if given else keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    converted = _convert(
        _converter_source(tmp_path, model, x, model.predict(x, verbose=0)), pd.DataFrame(x)
    )
    assert [b.name for b in converted.io.inputs] == [served]
    assert [i.name for i in converted.onnx_model.graph.input] == [served]
    session = ort.InferenceSession(converted.onnx_model.SerializeToString())
    got = session.run(None, {served: x[:5]})[0]
    np.testing.assert_allclose(got, model.predict(x[:5], verbose=0), atol=1e-5)


# --------------------------------------------------------------------------- bad input
def _converter_source(tmp_path, native, x, output) -> SourceModel:
    from mlflow.models import infer_signature

    return SourceModel(
        model_uri=str(tmp_path),
        flavor="tensorflow",
        native=native,
        local_path=str(tmp_path),
        signature=infer_signature(x, output),
    )


def _convert(source: SourceModel, sample: pd.DataFrame):
    sample.columns = [f"f{i}" for i in range(sample.shape[1])]
    from mlflow_deploy_plugins.onnx.converters.tensorflow import TensorFlowConverter

    return TensorFlowConverter().convert(source, sample, ConversionOptions())


def test_unsupported_op_is_named_with_what_to_do(tmp_path):
    import tensorflow as tf

    class Bessel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return tf.math.bessel_i0e(x)

    x = tf_models.data()["x"]
    module = Bessel()
    source = _converter_source(tmp_path, module, x, module(x).numpy())
    with pytest.raises(ConversionError) as info:
        _convert(source, pd.DataFrame(x))
    message = str(info.value)
    assert "BesselI0e" in message and "Replace the layer" in message
    assert "mlflow.onnx" in message  # the other way out


def test_signature_missing_is_refused(tmp_path):
    import mlflow.tensorflow

    from mlflow_deploy_plugins import convert

    x = tf_models.data()["x"]
    path = tmp_path / "unsigned"
    mlflow.tensorflow.save_model(tf_models.keras_mlp(), str(path), pip_requirements=["tf"])
    with pytest.raises(UnsupportedModelError, match="has no signature.*infer_signature"):
        convert(str(path), sample=x)


def test_other_refusals_name_the_problem(tmp_path):
    import keras

    x = tf_models.data()["x"]
    inp = keras.Input((4,))
    two_heads = keras.Model(inp, [keras.layers.Dense(1)(inp), keras.layers.Dense(2)(inp)])
    source = _converter_source(tmp_path, two_heads, x, x[:, :1])
    with pytest.raises(UnsupportedModelError, match="several outputs"):
        _convert(source, pd.DataFrame(x))
    mlp = tf_models.keras_mlp()
    source = _converter_source(tmp_path, mlp, pd.DataFrame(x, columns=list("abcd")), x[:, :3])
    with pytest.raises(UnsupportedModelError, match="column-based signature"):
        _convert(source, pd.DataFrame(x))
    source = _converter_source(tmp_path, mlp, x, x[:, :3])
    with pytest.raises(InvalidInputError, match="takes 4 column"):
        _convert(source, pd.DataFrame(x[:, :3]))
    images = np.zeros((2, 8, 8, 1), dtype=np.float32)
    source = _converter_source(tmp_path, mlp, images, x[:2, :3])
    with pytest.raises(UnsupportedModelError, match=r"shape \[-1, 8, 8, 1\]"):
        _convert(source, pd.DataFrame(x))
    source = _converter_source(tmp_path, object(), x, x[:, :3])
    with pytest.raises(UnsupportedModelError, match="expected a Keras model"):
        _convert(source, pd.DataFrame(x))


def test_without_tf2onnx_the_extra_is_named(monkeypatch):
    from mlflow_deploy_plugins.onnx.convert import get_converter

    monkeypatch.delitem(
        sys.modules, "mlflow_deploy_plugins.onnx.converters.tensorflow", raising=False
    )
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # what an absent package looks like
    with pytest.raises(UnsupportedModelError, match=r"mlflow-deploy-plugins\[tensorflow\]"):
        get_converter("tensorflow")


def test_without_tensorflow_the_extra_is_named(tf_store, monkeypatch):
    from mlflow_deploy_plugins.onnx.convert import load_source

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(UnsupportedModelError, match=r"mlflow-deploy-plugins\[tensorflow\]"):
        load_source("models:/tf-mlp/1")


def test_logged_models_are_told_pickle_free_from_their_mlmodel(tf_store):
    """The automation converts them without ``trust_pickle``: a ``.keras`` file without
    cloudpickled custom objects and a SavedModel run no code from the artifact."""
    from mlflow_deploy_plugins.registry.trust import source_format

    for name in ("tf-mlp", "tf-two-inputs", "tf-module"):
        found = source_format(f"models:/{name}/1")
        assert (found.flavor, found.format, found.runs_code) == ("tensorflow", "native", False)
