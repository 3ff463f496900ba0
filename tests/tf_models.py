"""Tiny real TensorFlow models logged with ``mlflow.tensorflow`` (built once per test session).

A Keras 3 Sequential MLP (one tensor input ``[-1, 4]``), a functional Keras model with two named
inputs ``a`` ``[-1, 3]`` and ``b`` ``[-1, 2]``, and a SavedModel (a ``tf.Module`` whose
``__call__`` is its serving signature), each registered in the current tracking store.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

ROWS = 300
#: the test modules' mark; find_spec, not importorskip: collecting the suite must not pay
#: TensorFlow's import (~10 s)
REQUIRES_TF = pytest.mark.skipif(
    find_spec("tensorflow") is None or find_spec("tf2onnx") is None,
    reason="needs the tensorflow extra (pip install mlflow-deploy-plugins[tensorflow])",
)


def _signature(x, y):
    from mlflow.models import infer_signature

    return infer_signature(x, y)


def keras_mlp():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def keras_two_inputs():
    import keras

    keras.utils.set_random_seed(1)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Concatenate()([keras.layers.Dense(8, activation="tanh")(a), b])
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(hidden))


def saved_module():
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(2)
            self.w = tf.Variable(rng.normal(size=(4, 2)).astype(np.float32))
            self.b = tf.Variable(np.array([0.5, -0.25], dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return tf.nn.sigmoid(tf.matmul(x, self.w) + self.b)

    return Scorer()


def data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    return {"x": x, "a": x[:, :3].copy(), "b": rng.normal(size=(ROWS, 2)).astype(np.float32)}


def log(model, name: str, example, output) -> str:
    """Log ``model`` with ``mlflow.tensorflow`` (signature, 5-row input example), register it
    as ``name`` and return ``models:/name/1``."""
    import mlflow.tensorflow

    head = {k: v[:5] for k, v in example.items()} if isinstance(example, dict) else example[:5]
    with mlflow.start_run():
        mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=_signature(head, output),
            input_example=head,
            registered_model_name=name,
            pip_requirements=["tensorflow-cpu"],  # no requirement inference (a TF subprocess)
        )
    return f"models:/{name}/1"
