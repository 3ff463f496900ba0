"""TensorFlow / Keras -> ONNX with tf2onnx: Keras 3 and tf.keras models, SavedModels (``tf.Module``).

Inputs come from the MLflow signature (tensor-based, what ``mlflow.tensorflow.log_model`` takes):
one input ``[N, k]`` binds every sample column in order (MLflow feeds it the frame by position);
several named inputs each bind the columns ``name_0 .. name_{k-1}`` (``sample.tensor_columns``)
and keep their names as ONNX inputs. The batch axis is dynamic. The graph has one output
``output`` with role ``value``, shaped like what MLflow's tensorflow pyfunc returns (the
reference runs ``keras_model.predict`` or ``module(x)``, as that pyfunc does).

tf2onnx is given a ``tf.function`` wrapping the model (``from_function`` with named
``TensorSpec``s and a dict output): this works for Keras 3, which ``from_keras`` does not handle,
and for restored SavedModels alike.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import onnx
import pandas as pd
import tf2onnx  # imported here so a missing package names the extra (convert.get_converter)

from mlflow_deploy_plugins.core.iospec import VALUE, InputBinding, IOSpec
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters._graph import graph_shape, outputs_from_graph
from mlflow_deploy_plugins.onnx.converters.base import (
    ConversionOptions,
    ConvertedModel,
    SourceModel,
    package_version,
)
from mlflow_deploy_plugins.onnx.sample import tensor_columns

_logger = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "output"
#: tf2onnx 1.17 writes graphs up to this opset
MAX_OPSET = 18
_DTYPES = ("float32", "float64", "int32", "int64")
HOW_TO_SIGN = (
    "log it again with a tensor signature, e.g. mlflow.tensorflow.log_model(model, "
    'name="model", signature=infer_signature(x, model.predict(x)))'
)


class TensorFlowConverter:
    flavors = ("tensorflow",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        model = source.native
        kind = _kind(model)
        inputs = _input_bindings(source, sample, kind)
        io = IOSpec(inputs=inputs, outputs=(), task="regression", default_role=VALUE)
        reference = self.reference_outputs(source, sample.head(2), io)
        opset = min(options.target_opset, MAX_OPSET)
        onx = _export(model, kind, inputs, opset)
        _check_ops(onx, model)
        _check_batch_axis(onx)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, {OUTPUT_NAME: VALUE}, reference),
            task="regression",
            default_role=VALUE,
        )
        notes = [f"exported from a {kind} with tf2onnx.convert.from_function at opset {opset}"]
        if opset != options.target_opset:
            notes.append(f"opset {opset}: tf2onnx writes at most {MAX_OPSET}")
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter="tf2onnx.convert.from_function",
            converter_version=package_version("tf2onnx"),
            notes=notes,
        )

    def uniform_missing(self, source: SourceModel) -> bool:
        """Missing values are refused in every column alike (``_refuse_missing``): the probe
        needs one call, not one per column."""
        return True

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        """What MLflow's tensorflow pyfunc returns on ``sample``: ``keras_model.predict(x)`` for
        a Keras model (a dict of named inputs when it has several), ``module(x)`` for a
        SavedModel."""
        model = source.native
        kind = _kind(model)
        columns = {str(c): sample[c].to_numpy() for c in sample.columns}
        feed = io.encode_columns({c: columns[c] for c in io.columns if c in columns}, len(sample))
        _refuse_missing(feed, io)
        try:
            if kind == "SavedModel":
                import tensorflow as tf

                out = model(tf.convert_to_tensor(next(iter(feed.values()))))
            elif len(feed) == 1:
                out = model.predict(next(iter(feed.values())), verbose=0)
            else:
                out = model.predict(feed, verbose=0)
        except Exception as e:  # TF raises InvalidArgumentError, ValueError, TypeError ...
            raise InvalidInputError(
                f"{_describe(model)} failed on the sample (inputs "
                f"{ {b.name: list(b.columns) for b in io.inputs} }): {type(e).__name__}: {e}"
            ) from e
        return {VALUE: _one_output(model, out, len(sample))}


# --------------------------------------------------------------------------- helpers
def _kind(model: Any) -> str:
    import tensorflow as tf

    keras_models = [tf.keras.Model]
    try:
        import keras

        keras_models.append(keras.Model)
    except ImportError:  # tf.keras alone (TF < 2.16 or tf_keras)
        pass
    if isinstance(model, tuple(keras_models)):
        return "Keras model"
    if isinstance(model, tf.Module) or hasattr(model, "signatures"):
        if not callable(model):
            raise UnsupportedModelError(
                f"{_describe(model)} is a SavedModel whose object is not callable: MLflow's "
                "tensorflow pyfunc calls it as module(x). Save a tf.Module whose __call__ is a "
                "tf.function with an input_signature (its serving signature)"
            )
        return "SavedModel"
    raise UnsupportedModelError(
        f"Cannot convert {_describe(model)} with the TensorFlow converter: expected a Keras "
        "model (keras.Model / tf.keras.Model) or a SavedModel (tf.Module)"
    )


def _signature_inputs(source: SourceModel) -> list:
    inputs = getattr(source.signature, "inputs", None)
    if inputs is None:
        raise UnsupportedModelError(
            f"Model '{source.model_uri}' has no signature: the TensorFlow converter takes the "
            f"input names, dtypes and shapes from it; {HOW_TO_SIGN}"
        )
    if not inputs.is_tensor_spec():
        raise UnsupportedModelError(
            f"Model '{source.model_uri}' has a column-based signature {inputs.input_names()}: "
            "the TensorFlow converter needs tensor inputs (numpy arrays), as "
            f"mlflow.tensorflow.log_model itself requires today; {HOW_TO_SIGN}"
        )
    specs = list(inputs.inputs)
    for spec in specs:
        shape, dtype = tuple(spec.shape), np.dtype(spec.type).name
        if len(shape) not in (1, 2) or any(d is None or d < 0 for d in shape[1:]):
            raise UnsupportedModelError(
                f"Input '{spec.name or INPUT_NAME}' has shape {list(shape)}: only inputs of one "
                "value or one fixed-width row per example ([-1] or [-1, k]) map to table columns"
            )
        if dtype not in _DTYPES:
            raise UnsupportedModelError(
                f"Input '{spec.name or INPUT_NAME}' is {dtype}; supported: {', '.join(_DTYPES)}"
            )
    return specs


def _input_bindings(source: SourceModel, sample: pd.DataFrame, kind: str):
    specs = _signature_inputs(source)
    if len(specs) == 1:
        spec = specs[0]
        width = spec.shape[1] if len(spec.shape) == 2 else 1
        if sample.shape[1] != width:
            raise InvalidInputError(
                f"Input '{spec.name or INPUT_NAME}' takes {width} column(s) (signature shape "
                f"{list(spec.shape)}) but the sample has {sample.shape[1]}: "
                f"{[str(c) for c in sample.columns]}"
            )
        columns = tuple(str(c) for c in sample.columns)
        shape = (None, width) if len(spec.shape) == 2 else (None,)
        name = spec.name or _keras_input_name(source.native, kind) or INPUT_NAME
        return (InputBinding(name, columns, np.dtype(spec.type).name, shape),)
    if kind == "SavedModel":
        raise UnsupportedModelError(
            f"The SavedModel of '{source.model_uri}' has {len(specs)} inputs "
            f"{[s.name for s in specs]}: MLflow's tensorflow pyfunc calls a tf.Module with one "
            "tensor, so only one input can be compared and served"
        )
    bindings = []
    for spec in specs:
        columns = tuple(tensor_columns(spec.name, spec.shape))
        missing = [c for c in columns if c not in sample.columns]
        if missing:
            raise InvalidInputError(
                f"The sample is missing column(s) {missing} of input '{spec.name}' "
                f"(shape {list(spec.shape)}); sample columns: {[str(c) for c in sample.columns]}"
            )
        shape = (None, len(columns)) if len(spec.shape) == 2 else (None,)
        bindings.append(InputBinding(spec.name, columns, np.dtype(spec.type).name, shape))
    return tuple(bindings)


#: Names Keras gives inputs nobody named (Keras 3: input_layer_2, keras_tensor_7; tf.keras:
#: input_1, dense_input): not a name a client knows, so the twin's input is "input".
_GENERATED_INPUT_NAME = re.compile(r"^(input_layer|keras_tensor|input)(_\d+)?$|_input(_\d+)?$")
#: What tf.TensorSpec accepts as a name (the export names the tf.function's inputs so).
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/]*$")


def _keras_input_name(model: Any, kind: str) -> str | None:
    """The name a Keras model's one input was given (``keras.Input(name="features")``), which
    TF Serving's signature and its clients use, or None for a generated name or a SavedModel.
    MLflow's tensor signature of a numpy example has no name."""
    if kind != "Keras model":
        return None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # a subclassed model that was never built on an Input
        return None
    if not inputs or len(inputs) != 1:
        return None
    name = str(getattr(inputs[0], "name", "") or "").split(":")[0]
    if not _TENSOR_NAME.match(name) or _GENERATED_INPUT_NAME.search(name):
        return None
    return name


def _refuse_missing(feed: dict, io: IOSpec) -> None:
    """A network has no missing-value semantics: NaN flows through its arithmetic, and the gate
    saw NaN rows answer differently in TF and onnxruntime. The twin refuses missing values in
    every column; refusing here makes the probe record that."""
    for binding in io.inputs:
        values = feed[binding.name]
        if values.dtype.kind == "f" and np.isnan(np.sum(values)):
            table = values.reshape(len(values), -1)
            columns = [c for j, c in enumerate(binding.columns) if np.isnan(table[:, j]).any()]
            raise ValueError(
                f"Input X contains NaN in column(s) {columns}: a TensorFlow model has no "
                "missing-value handling, so missing values are refused"
            )


def _one_output(model: Any, out: Any, rows: int) -> np.ndarray:
    if isinstance(out, (dict, list, tuple)):
        names = list(out) if isinstance(out, dict) else f"{len(out)} outputs"
        raise UnsupportedModelError(
            f"{_describe(model)} returns several outputs ({names}); only models returning one "
            "tensor can be converted (serve each head as its own model)"
        )
    out = np.asarray(out)
    if out.ndim == 0 or out.shape[0] != rows:
        raise UnsupportedModelError(
            f"{_describe(model)} returns shape {out.shape} for {rows} rows; the first axis of "
            "the output must be the batch axis"
        )
    return out


def _export(model: Any, kind: str, inputs: tuple[InputBinding, ...], opset: int):
    import tensorflow as tf

    names = [b.name for b in inputs]
    specs = [tf.TensorSpec(b.shape, tf.as_dtype(b.dtype), name=b.name) for b in inputs]
    if kind == "SavedModel":

        def call(*args):
            return model(*args)
    elif len(inputs) == 1:

        def call(*args):
            return model(args[0], training=False)
    else:

        def call(*args):
            return model(dict(zip(names, args, strict=True)), training=False)

    function = tf.function(lambda *args: {OUTPUT_NAME: call(*args)})
    try:
        onx, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=opset)
    except Exception as e:  # tf2onnx raises ValueError, TypeError, its own errors ...
        raise ConversionError(
            f"tf2onnx could not convert {_describe(model)}: {type(e).__name__}: {e}"
        ) from e
    return onx


def _check_ops(onx: onnx.ModelProto, model: Any) -> None:
    """tf2onnx keeps going past an op it cannot convert and leaves the TF op in the graph."""
    unknown = sorted(
        {
            f"{node.op_type} (node {node.name})"
            for node in onx.graph.node
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)
        }
    )
    if unknown:
        raise ConversionError(
            f"tf2onnx cannot convert TensorFlow op(s) {', '.join(unknown)} of "
            f"{_describe(model)}: ONNX has no equivalent in tf2onnx {tf2onnx.__version__}. "
            "Replace the layer using it with standard layers (Dense, Conv, activations, ...), "
            "or export the model to ONNX yourself and log it with mlflow.onnx"
        )


def _check_batch_axis(onx: onnx.ModelProto) -> None:
    for vi in [*onx.graph.input, *onx.graph.output]:
        shape = graph_shape(vi)
        if shape and shape[0] is not None:
            raise ConversionError(
                f"The converted graph's '{vi.name}' has shape {shape}: its batch axis is not "
                "dynamic (the model fixes its batch size)"
            )


def _describe(model: Any) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"
