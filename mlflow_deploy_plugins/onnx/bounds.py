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
from onnx import TensorProto, numpy_helper

from mlflow_deploy_plugins.core.iospec import PROBABILITIES, IOSpec
from mlflow_deploy_plugins.onnx.converters._graph import rewrite_output

_logger = logging.getLogger(__name__)

_FLOAT_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}
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
    source = reference.get(PROBABILITIES)
    if source is None or not _within_unit(source):
        return model, []
    elem_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    graph_inputs = {i.name for i in model.graph.input}
    names = [
        o.name
        for o in io.outputs
        if o.role == PROBABILITIES
        and elem_types.get(o.name) in _FLOAT_TYPES
        and o.name not in graph_inputs
    ]
    if not names:
        return model, []
    clipped = onnx.ModelProto()
    clipped.CopyFrom(model)
    opset = next((o.version for o in clipped.opset_import if o.domain in ("", "ai.onnx")), 0)
    for name in names:
        if opset >= _CLIP_INPUTS_SINCE:
            np_type = _FLOAT_TYPES[elem_types[name]]
            bounds = [
                numpy_helper.from_array(np.array(0, dtype=np_type), f"{name}_clip_min"),
                numpy_helper.from_array(np.array(1, dtype=np_type), f"{name}_clip_max"),
            ]
            rewrite_output(clipped, name, "Clip", constants=bounds)
        else:
            rewrite_output(clipped, name, "Clip", min=0.0, max=1.0)
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
