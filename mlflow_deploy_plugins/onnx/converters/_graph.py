"""Helpers shared by converters: read an ONNX graph's outputs into an IOSpec, name columns,
feed an output through one more node."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, VALUE, OutputSpec

_ELEM = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.STRING: "string",
}


def elem_dtype(value_info: onnx.ValueInfoProto) -> str:
    elem = value_info.type.tensor_type.elem_type
    return _ELEM.get(elem, onnx.TensorProto.DataType.Name(elem).lower())


def graph_shape(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def outputs_from_graph(
    model: onnx.ModelProto,
    roles: Mapping[str, str],
    reference: Mapping[str, np.ndarray] | None = None,
) -> tuple[OutputSpec, ...]:
    """OutputSpecs for the graph outputs named in ``roles`` (name -> role).

    The recorded shape is the shape the SOURCE returns (e.g. ``(None,)`` for a regressor whose
    graph output is ``[N, 1]``), so the pyfunc and the server reshape ONNX results to match it.
    """
    by_name = {o.name: o for o in model.graph.output}
    specs = []
    for name, role in roles.items():
        vi = by_name[name]
        shape = graph_shape(vi)
        if reference is not None and role in reference:
            shape = (None,) + tuple(np.asarray(reference[role]).shape[1:])
        specs.append(OutputSpec(name=name, dtype=elem_dtype(vi), role=role, shape=shape))
    return tuple(specs)


def default_roles(model: onnx.ModelProto) -> dict[str, str]:
    """Guess roles from conventional output names (skl2onnx, onnxmltools)."""
    roles = {}
    for out in model.graph.output:
        lname = out.name.lower()
        if lname in ("label", "output_label"):
            roles[out.name] = LABEL
        elif lname in ("probabilities", "output_probability", "probability"):
            roles[out.name] = PROBABILITIES
        else:
            roles[out.name] = VALUE
    return roles


def table_dtype(series: pd.Series) -> str:
    """The IOSpec dtype a DataFrame column maps to."""
    kind = series.dtype.kind
    if (
        kind in "OUSb"
        or isinstance(series.dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(series.dtype)
    ):
        return "string" if kind != "b" else "bool"
    if kind in "iu":
        return "int64"
    return "float32"


def column_names(sample: pd.DataFrame | None, n: int, preferred=None) -> list[str]:
    if preferred is not None:
        return [str(c) for c in preferred]
    if sample is not None and len(sample.columns) == n:
        return [str(c) for c in sample.columns]
    return [f"f{i}" for i in range(n)]


def rewrite_output(
    model: onnx.ModelProto,
    name: str,
    op_type: str,
    constants=(),
    batch_only: bool = False,
    **attributes,
) -> None:
    """Feed graph output ``name`` through one more ``op_type`` node, keeping its name, in place.

    Nodes that read ``name`` inside the graph keep reading the tensor as it was (renamed to a
    name no other tensor has). ``constants`` are TensorProtos added as initializers and passed
    as the node's extra inputs; ``batch_only`` declares the new output as shape ``[N]``.
    """
    from onnx import helper

    graph = model.graph
    raw = detach_output(graph, name, f"{name}_before_{op_type.lower()}")
    graph.initializer.extend(constants)
    graph.node.append(
        helper.make_node(
            op_type,
            [raw, *(c.name for c in constants)],
            [name],
            name=f"{name}_{op_type}",
            **attributes,
        )
    )
    if batch_only:
        for out in graph.output:
            if out.name == name:
                shape = out.type.tensor_type.shape
                del shape.dim[:]
                shape.dim.add().dim_param = "N"


def detach_output(graph: onnx.GraphProto, name: str, base: str) -> str:
    """Rename the tensor behind graph output ``name`` to a free name from ``base`` (in the nodes
    that write and read it and in ``value_info``) and return that name; the caller then writes
    ``name`` again from new nodes, so the output keeps its name, dtype and shape."""
    raw = free_name(graph, base)
    for node in graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
        node.input[:] = [raw if i == name else i for i in node.input]
    for info in graph.value_info:
        if info.name == name:
            info.name = raw
    return raw


def free_name(graph: onnx.GraphProto, base: str) -> str:
    taken = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        taken.update(node.input)
        taken.update(node.output)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
