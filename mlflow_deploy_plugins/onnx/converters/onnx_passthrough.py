"""Models already in ONNX: validate, pass through unchanged, and describe their inputs/outputs.

The IOSpec follows how the MLflow ``onnx`` pyfunc feeds a DataFrame:

* one 2-D input ``[N, k]``: the whole frame is that matrix, so the binding takes the sample's
  columns in order;
* otherwise every input must be one column (``[N]`` or ``[N, 1]``), fed from the column named like
  the input.

Outputs that are not tensors (e.g. a ZipMap's sequence of maps) are left out of the IOSpec.
``reference_outputs`` runs the ORIGINAL model with every graph optimisation disabled, so parity
later compares whatever optimised graph is served with the model as it was logged.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import (
    LABEL,
    PROBABILITIES,
    ROLES,
    InputBinding,
    IOSpec,
)
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters._graph import (
    column_names,
    default_roles,
    elem_dtype,
    graph_shape,
    outputs_from_graph,
)
from mlflow_deploy_plugins.onnx.converters.base import (
    ConversionOptions,
    ConvertedModel,
    SourceModel,
    package_version,
)

_logger = logging.getLogger(__name__)

#: protobuf cannot serialise a message of 2 GiB or more: such models are read from their file.
_PROTOBUF_LIMIT = 2**31 - 1
_BINDABLE = ("float32", "float64", "int64", "int32", "bool", "string")


class OnnxPassthroughConverter:
    flavors = ("onnx",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        model = _check_model(source)
        inputs = _input_bindings(model, sample)
        roles, notes = _roles(model)
        task = "classification" if {LABEL, PROBABILITIES} <= set(roles.values()) else "regression"
        io = IOSpec(inputs=inputs, outputs=outputs_from_graph(model, roles), task=task)
        reference = self.reference_outputs(source, sample.head(2), io)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(model, roles, reference),
            task=task,
            classes=_classes(model) if task == "classification" else None,
            default_role=LABEL if task == "classification" else next(iter(roles.values())),
        )
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and opset != options.target_opset:
            notes.append(f"passed through at opset {opset} (target_opset is not applied)")
        passed = onnx.ModelProto()
        passed.CopyFrom(model)  # later passes may edit it; the reference runs the original
        return ConvertedModel(
            onnx_model=passed,
            io=io,
            converter="passthrough",
            converter_version=package_version("onnx"),
            notes=notes,
        )

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        session = self._source_session(source)
        feed = io.encode_columns({c: sample[c].to_numpy() for c in io.columns}, n_rows=len(sample))
        wanted = [o for o in io.outputs if o.role in ROLES]
        try:
            results = session.run([o.name for o in wanted], feed)
        except Exception as e:
            raise InvalidInputError(
                f"The ONNX model {source.model_uri} failed on the sample: {e}"
            ) from e
        reference: dict[str, np.ndarray] = {}
        for out, value in zip(wanted, results, strict=True):
            reference.setdefault(out.role, np.asarray(value))  # first output of a role wins
        return reference

    def _source_session(self, source: SourceModel):
        """One session over the original model per conversion (the gate, the probe and the
        missing-value rows all ask the source)."""
        from mlflow_deploy_plugins.core.session import make_session

        cached = getattr(self, "_session", None)
        if cached is not None and cached[0] is source.native:
            return cached[1]
        try:
            session = make_session(_serialized(source), level="disable")
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented
            raise ConversionError(
                f"onnxruntime cannot load the ONNX model {source.model_uri}: {e}"
            ) from e
        self._session = (source.native, session)
        return session


# --------------------------------------------------------------------------- helpers
def _check_model(source: SourceModel) -> onnx.ModelProto:
    model = source.native
    if not isinstance(model, onnx.ModelProto):
        raise UnsupportedModelError(
            f"Cannot pass through {type(model).__module__}.{type(model).__name__}: expected an "
            "onnx.ModelProto (what mlflow.onnx.load_model returns)"
        )
    try:
        if model.ByteSize() >= _PROTOBUF_LIMIT:
            onnx.checker.check_model(_model_file(source))
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise ConversionError(f"The ONNX model {source.model_uri} is invalid: {e}") from e
    return model


def _model_file(source: SourceModel) -> str:
    path = os.path.join(source.local_path, source.flavor_conf.get("data", "model.onnx"))
    if not os.path.exists(path):
        raise ConversionError(
            f"The ONNX model {source.model_uri} is over 2 GiB and its file {path} is missing"
        )
    return path


def _serialized(source: SourceModel):
    """Bytes of the original model, or its file when protobuf cannot serialise it."""
    model = source.native
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        return _model_file(source)
    return model.SerializeToString()


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs the caller feeds (old IR versions also list initializers as inputs)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _input_bindings(model: onnx.ModelProto, sample: pd.DataFrame) -> tuple[InputBinding, ...]:
    inputs = _graph_inputs(model)
    if not inputs:
        raise UnsupportedModelError("The ONNX model has no inputs to bind table columns to")
    shapes = {}
    for vi in inputs:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            raise UnsupportedModelError(
                f"ONNX input '{vi.name}' has no tensor shape; cannot bind table columns to it"
            )
        dtype = elem_dtype(vi)
        if dtype not in _BINDABLE:
            raise UnsupportedModelError(f"ONNX input '{vi.name}' has unsupported type {dtype}")
        shape = graph_shape(vi)
        if shape and shape[0] is not None:
            raise UnsupportedModelError(
                f"ONNX input '{vi.name}' has a fixed batch dimension {shape}; re-export the model "
                "with a dynamic first axis"
            )
        shapes[vi.name] = shape

    if len(inputs) == 1 and len(shapes[inputs[0].name]) == 2:
        vi = inputs[0]
        width = shapes[vi.name][1]
        if width is not None and width != sample.shape[1]:
            raise InvalidInputError(
                f"ONNX input '{vi.name}' takes {width} column(s) but the sample has "
                f"{sample.shape[1]}: {[str(c) for c in sample.columns]}"
            )
        columns = column_names(sample, sample.shape[1])
        return (
            InputBinding(
                name=vi.name,
                columns=tuple(columns),
                dtype=elem_dtype(vi),
                shape=(None, width if width is not None else len(columns)),
            ),
        )

    bad = {n: s for n, s in shapes.items() if s not in ((None,), (None, 1))}
    if bad:
        raise UnsupportedModelError(
            f"Cannot bind table columns to ONNX inputs {bad}: expected one 2-D input [N, k] or "
            "inputs of one column each ([N] or [N, 1])"
        )
    missing = [vi.name for vi in inputs if vi.name not in sample.columns]
    if missing:
        raise InvalidInputError(
            f"The sample is missing column(s) {missing}: each ONNX input is fed from the column "
            f"of the same name (sample columns: {[str(c) for c in sample.columns]})"
        )
    return tuple(
        InputBinding(name=vi.name, columns=(vi.name,), dtype=elem_dtype(vi), shape=shapes[vi.name])
        for vi in inputs
    )


def _roles(model: onnx.ModelProto) -> tuple[dict[str, str], list[str]]:
    """Roles of the tensor outputs; non-tensor outputs are noted and left out."""
    tensors = {o.name for o in model.graph.output if o.type.HasField("tensor_type")}
    skipped = [o.name for o in model.graph.output if o.name not in tensors]
    if not tensors:
        raise UnsupportedModelError(
            f"The ONNX model has no tensor outputs (outputs {skipped} are sequences or maps)"
        )
    roles = {name: role for name, role in default_roles(model).items() if name in tensors}
    notes = [f"non-tensor output(s) {skipped} are not served"] if skipped else []
    return roles, notes


def _classes(model: onnx.ModelProto) -> tuple | None:
    """Class labels of the graph's one ai.onnx.ml classifier node, if it has exactly one."""
    found = []
    for node in model.graph.node:
        if node.domain == "ai.onnx.ml" and node.op_type.endswith("Classifier"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("classlabels_strings"):
                found.append(tuple(s.decode() for s in attrs["classlabels_strings"]))
            else:
                ints = attrs.get("classlabels_int64s") or attrs.get("classlabels_ints")
                if ints:
                    found.append(tuple(int(i) for i in ints))
    return found[0] if len(found) == 1 else None
