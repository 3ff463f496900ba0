"""Probabilities stay probabilities: a Clip to [0, 1] on the twin's probability outputs.

A converted tree ensemble averages its trees' leaf values in float32, so where the source says
exactly 0 or 1 the graph can say -1.19e-07 or 1.0000001 (a 10-tree random forest does). That is
within the parity tolerances, but a client taking ``log(p)`` gets NaN, and a served probability
below 0 is something the source never returns. :func:`clip_probabilities` appends a ``Clip``
node to each probability output, only when the source's own probabilities on the sample lie in
[0, 1] (then clipping can only bring the twin closer to its source). Output names, dtypes and
shapes are unchanged; the parity gate runs on the clipped graph.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlflow_deploy_plugins.core.iospec import PROBABILITIES, IOSpec

_logger = logging.getLogger(__name__)

_FLOAT_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}
_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
#: Clip takes min/max as inputs from opset 11 (attributes before).
_CLIP_INPUTS_SINCE = 11


def clip_probabilities(
    model: onnx.ModelProto, io: IOSpec, reference: dict
) -> tuple[onnx.ModelProto, list[str]]:
    """``(model, names clipped)``: a copy of ``model`` whose probability outputs go through
    ``Clip(0, 1)``, or ``model`` itself when there is nothing to clip.

    ``reference`` maps roles to the source's outputs on the sample: an output is clipped only
    when the source's values for its role are all within [0, 1] (NaN ignored).
    """
    wanted = [o.name for o in io.outputs if o.role == PROBABILITIES]
    source = reference.get(PROBABILITIES)
    if not wanted or source is None or not _within_unit(source):
        return model, []
    graph_outputs = {o.name: o for o in model.graph.output}
    names = [
        n
        for n in wanted
        if n in graph_outputs
        and graph_outputs[n].type.tensor_type.elem_type in _FLOAT_TYPES
        and n not in {i.name for i in model.graph.input}
    ]
    if not names:
        return model, []
    clipped = onnx.ModelProto()
    clipped.CopyFrom(model)
    graph = clipped.graph
    opset = next((o.version for o in clipped.opset_import if o.domain in ("", "ai.onnx")), 0)
    taken = _all_names(graph)
    for name in names:
        raw = _unique(f"{name}_unclipped", taken)
        _rename(graph, name, raw)
        np_type = _FLOAT_TYPES[graph_outputs[name].type.tensor_type.elem_type]
        if opset >= _CLIP_INPUTS_SINCE:
            low, high = _unique(f"{name}_min", taken), _unique(f"{name}_max", taken)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(0, dtype=np_type), low),
                    numpy_helper.from_array(np.array(1, dtype=np_type), high),
                ]
            )
            node = helper.make_node("Clip", [raw, low, high], [name], name=f"{name}_clip")
        else:
            node = helper.make_node("Clip", [raw], [name], name=f"{name}_clip", min=0.0, max=1.0)
        graph.node.append(node)
    onnx.checker.check_model(clipped)
    _logger.debug("Probability outputs bounded to [0, 1]: %s", names)
    return clipped, names


def _within_unit(values) -> bool:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    finite = array[~np.isnan(array)]
    return finite.size > 0 and bool(finite.min() >= 0.0 and finite.max() <= 1.0)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every use of tensor ``old`` inside the graph becomes ``new`` (the graph output keeps the
    name ``old``: the Clip node produces it). Subgraphs (If/Loop bodies) see outer tensors by
    name, so their inputs are renamed too."""
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            subgraphs = (attr.g, *attr.graphs) if attr.type in _GRAPH_ATTRIBUTES else ()
            for sub in subgraphs:
                if not any(o.name == old for o in (*sub.input, *sub.output)):
                    for sub_node in sub.node:
                        for i, name in enumerate(sub_node.input):
                            if name == old:
                                sub_node.input[i] = new
    for info in graph.value_info:
        if info.name == old:
            info.name = new
